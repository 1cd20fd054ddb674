# Upgrades.  A database created at each landed version has exactly the
# objects its users had (t/data/catalog-<version>.txt, the catalog listing
# of an install of that version).
# Until it is updated, a database on an old version works with the current
# library as it did (old result shapes, old signatures).
# ALTER EXTENSION flowella_apikey UPDATE, from 1.0, 1.1, 1.2, 1.3 and 1.4,
# gives the same objects as a fresh install of the current version
# (compared as catalog listings: every member object with its definition,
# ACL and flags), keeps every key, token, audit record, last use and (from
# 1.3) every request of the usage history as it was, and the API then works
# on the updated database as on a fresh one, the per-key policy and
# rotation with a grace period included.
use strict;
use warnings;
use File::Basename qw(dirname);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowellaTest;

my $node = preloaded_node('upgrade', q{
flowella.usage_flush_interval = 1
});

my $default_version = $node->safe_psql('postgres',
	"SELECT default_version FROM pg_available_extensions WHERE name = 'flowella_apikey'");
isnt($default_version, '1.0', "the current version ($default_version) is not 1.0");
isnt($default_version, '1.1', "the current version ($default_version) is not 1.1");
isnt($default_version, '1.2', "the current version ($default_version) is not 1.2");
isnt($default_version, '1.3', "the current version ($default_version) is not 1.3");
isnt($default_version, '1.4', "the current version ($default_version) is not 1.4");

my $owner = 'e1000000-0000-4000-8000-000000000001';
my $admin = 'e1000000-0000-4000-8000-000000000002';

sub last_line
{
	my ($out) = @_;
	return (split /\n/, $out)[-1];
}

sub extversion
{
	my ($db) = @_;
	return $node->safe_psql($db,
		"SELECT extversion FROM pg_extension WHERE extname = 'flowella_apikey'");
}

# What the users of each landed version had: the listing of a database
# where CREATE EXTENSION flowella_apikey VERSION '<v>' ran, taken when that
# version landed (t/data/catalog-<v>.txt; 1.1 from its full install script,
# since dropped: 1.1 is now installed as 1.0 plus the update to 1.1).  The
# listing has no OID, no timestamp and no cluster-specific name.  Never
# regenerate one from the current scripts: it is the reference they are
# held to.
for my $version ('1.1', '1.2', '1.3', '1.4', '1.5')
{
	(my $tag = $version) =~ s/\./_/;
	my $fixture = slurp_file(dirname(__FILE__) . "/data/catalog-$version.txt");
	chomp $fixture;

	# Both ways a database reaches it give exactly that: CREATE EXTENSION
	# at that version, and 1.0 updated to it.
	$node->safe_psql('postgres', "CREATE DATABASE at_$tag");
	$node->safe_psql("at_$tag", "CREATE EXTENSION flowella_apikey VERSION '$version'");
	is(extversion("at_$tag"), $version, "CREATE EXTENSION VERSION $version installs $version");
	listing_is(catalog_listing($node, "at_$tag"), $fixture,
		"a database created at $version has what $version users had (t/data/catalog-$version.txt)");

	$node->safe_psql('postgres', "CREATE DATABASE stepped_$tag");
	$node->safe_psql("stepped_$tag", "CREATE EXTENSION flowella_apikey VERSION '1.0'");
	$node->safe_psql("stepped_$tag", "ALTER EXTENSION flowella_apikey UPDATE TO '$version'");
	listing_is(catalog_listing($node, "stepped_$tag"), $fixture,
		"a database updated from 1.0 to $version has what $version users had");
}

# The result columns of apikey_list and apikey_verify on each old version.
my %list_columns = ('1.0' => 12, '1.1' => 12, '1.2' => 12, '1.3' => 14, '1.4' => 14);
my %verify_columns = ('1.0' => 6, '1.1' => 6, '1.2' => 6, '1.3' => 8, '1.4' => 8);

# Every bucket of the usage history as the superuser reads it: 1.3's table,
# then 1.4's view of the same name.  And the requests apikey_usage shows.
my $usage_rows_sql = q{SELECT key_id, minute, client_ip, scope, code, requests
						 FROM flowella.api_key_usage ORDER BY 1, 2, 3, 4, 5};
my $usage_sum_sql = q{SELECT count(*) || ' ' || sum(u.requests)
						FROM flowella.api_keys k,
							 LATERAL flowella.apikey_usage(k.key_id, now() - interval '1 day', now()) u};

# A database on each old version with keys in every state, member changes,
# audit records and last uses (and on 1.3, usage history); its data is
# snapshot before the update.
my %old;
for my $from ('1.0', '1.1', '1.2', '1.3', '1.4')
{
	(my $db = "old_$from") =~ s/\./_/;
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, qq{
		CREATE EXTENSION pgcrypto;
		CREATE EXTENSION flowella_apikey VERSION '$from';
		SELECT flowella.plan_set('pro', ARRAY['messages:send', 'messages:read', 'analytics:read'], true);
		SELECT flowella.org_create('Old Ltd', 'pro', '$owner');
		SELECT flowella.member_set((SELECT org_id FROM flowella.orgs), '$admin', 'admin');
	});
	is(extversion($db), $from, "$db starts on $from");

	my @tokens;
	for my $i (1 .. 4)
	{
		my $expiry = $i == 4 ? "now() + interval '30 days'" : 'NULL';
		my $out = $node->safe_psql($db, qq{
			BEGIN;
			SELECT flowella.set_actor('$owner', '198.51.100.$i');
			SELECT token FROM flowella.apikey_create((SELECT org_id FROM flowella.orgs),
				'key $i', ARRAY['messages:send', 'messages:read'], 'live', $expiry);
			COMMIT;
		});
		push @tokens, (grep { /^flwl_/ } split /\n/, $out)[0];
	}
	$node->safe_psql($db, qq{
		BEGIN;
		SELECT flowella.set_actor('$owner');
		SELECT flowella.apikey_revoke(key_id) FROM flowella.api_keys WHERE label = 'key 1';
		SELECT flowella.apikey_set_scopes(key_id, ARRAY['messages:read'])
		  FROM flowella.api_keys WHERE label = 'key 2';
		COMMIT;
	});

	# The current library serves the old schema with its old shapes:
	# apikey_list's columns, verify's, replace's one argument.
	is(last_line($node->safe_psql($db, qq{
			BEGIN;
			SELECT flowella.set_actor('$owner');
			SELECT count(*) FROM json_object_keys((
				SELECT row_to_json(l) FROM flowella.apikey_list((SELECT org_id FROM flowella.orgs)) l
				 LIMIT 1));
			COMMIT;})),
		$list_columns{$from}, "on $from, before the update: apikey_list has its $list_columns{$from} columns");
	is($node->safe_psql($db, qq{
			SELECT count(*) FROM json_object_keys((
				SELECT row_to_json(v) FROM flowella.apikey_verify('$tokens[2]', 'messages:read') v))}),
		$verify_columns{$from}, "on $from, before the update: apikey_verify answers its $verify_columns{$from} columns");
	like($node->safe_psql($db, qq{
			BEGIN;
			SELECT flowella.set_actor('$owner');
			SELECT prefix FROM flowella.apikey_replace(
				(SELECT key_id FROM flowella.api_keys WHERE label = 'key 1'));
			COMMIT;}),
		qr/flwl_live_/, "on $from, before the update: apikey_replace(old_key_id) works");

	verify_uses($node, $db, \@tokens, 3);
	# 1.3 counts requests too: some from several client IPs and scopes
	# (their last uses are written before the snapshot below).
	if ($from eq '1.3')
	{
		$node->safe_psql($db, qq{
			SELECT count(*) FROM unnest(ARRAY['$tokens[0]', '$tokens[1]', '$tokens[3]']) t,
				   generate_series(1, 6) i,
				   LATERAL flowella.apikey_verify(t, CASE WHEN i % 2 = 0 THEN 'messages:read' END,
												  ('192.0.2.' || i % 4)::inet) v});
		wait_for_flush($node, $db);
	}
	my %snap = snapshot_queries(@tokens);
	my %before = take_snapshot($node, $db, %snap);
	like($before{verify}, qr/REVOKED.*VALID.*VALID.*VALID/s, "tokens verify on $from");
	is($node->safe_psql($db, 'SELECT count(*) FROM flowella.api_keys'), '5',
		"$from: five keys before the update");
	like($before{audit}, qr/key\.created.*key\.revoked.*key\.scopes_changed/s,
		"audit records on $from");
	$before{tokens} = \@tokens;

	# 1.3: usage history, one row per bucket in 1.3's table.
	if ($from eq '1.3')
	{
		$node->poll_query_until($db, 'SELECT requests_pending = 0 FROM flowella.usage_stats()')
		  or die 'usage counts were not flushed';
		$before{usage_rows} = $node->safe_psql($db, $usage_rows_sql);
		$before{usage_sum} = $node->safe_psql($db, $usage_sum_sql);
		like($before{usage_rows}, qr/192\.0\.2\.2\|messages:read\|VALID/,
			"usage history on $from, with client IPs and scopes");
		like($before{usage_rows}, qr/REVOKED/, "usage history on $from, with refusals");
		cmp_ok((split / /, $before{usage_sum})[1], '>=', 18,
			"on $from: apikey_usage shows the requests");
		is($node->safe_psql($db, 'SELECT count(*) FROM flowella.api_key_usage'),
			(split / /, $before{usage_sum})[0], "on $from: one row per bucket in the table");
	}
	$old{$from} = { db => $db, snap => \%snap, before => \%before };
}

# A fresh install of the current version, in its own database (the roles
# are cluster-wide and already exist: the install script must accept them).
$node->safe_psql('postgres', 'CREATE DATABASE fresh_db');
$node->safe_psql('fresh_db', 'CREATE EXTENSION pgcrypto; CREATE EXTENSION flowella_apikey');
is(extversion('fresh_db'), $default_version, "a fresh install is $default_version");
my $fresh = catalog_listing($node, 'fresh_db');
cmp_ok(scalar(split /\n/, $fresh), '>', 200, 'the catalog listing is not trivially small');

for my $from (sort keys %old)
{
	my ($db, $snap, $before) = @{ $old{$from} }{qw(db snap before)};

	$node->safe_psql($db, 'ALTER EXTENSION flowella_apikey UPDATE');
	is(extversion($db), $default_version, "$db updated from $from to $default_version");

	# Every member object of the extension with its definition, ACL and
	# flags (FlowellaTest::catalog_listing); a failure shows the diff.
	listing_is(catalog_listing($node, $db), $fresh,
		"updated from $from: objects equal a fresh install (catalog listing, in order)");

	# Every request of the usage history kept, bucket by bucket (the
	# view), and apikey_usage shows the same.
	if ($from eq '1.3')
	{
		is($node->safe_psql($db, $usage_rows_sql), $before->{usage_rows},
			"updated from $from: every usage bucket kept, with its requests (the view)");
		is($node->safe_psql($db, $usage_sum_sql), $before->{usage_sum},
			"updated from $from: apikey_usage shows the same buckets and requests");
		is($node->safe_psql($db, q{
				SELECT count(*) = count(DISTINCT (key_id, minute)) FROM flowella.api_key_usage_log}),
			't', "updated from $from: one row per key and minute in the new table");
	}

	# Data untouched; tokens verify the same.
	for my $what (snapshot_order(%$snap))
	{
		is($node->safe_psql($db, $snap->{$what}), $before->{$what},
			"updated from $from: $what unchanged by the update");
	}

	# 1.5: the update chained the existing audit records (t/015 checks
	# it in detail, with several organisations).
	is($node->safe_psql($db, q{
			SELECT v.ok || ' ' || (v.checked = (SELECT count(*) FROM flowella.audit_records))
			  FROM flowella.orgs o, flowella.audit_verify(o.org_id) v}),
		'true true', "updated from $from: every existing audit record is chained and verifies");

	# The API on the updated database: create, revoke and change scopes
	# write their audit records, numbered after the old ones, attributed as
	# before.
	my $max_event = $node->safe_psql($db, 'SELECT max(event_id) FROM flowella.audit_records');
	my $out = $node->safe_psql($db, qq{
		BEGIN;
		SELECT flowella.set_actor('$admin', '203.0.113.9');
		SELECT token FROM flowella.apikey_create((SELECT org_id FROM flowella.orgs),
			'after upgrade', ARRAY['analytics:read']);
		COMMIT;
	});
	my ($new_token) = grep { /^flwl_/ } split /\n/, $out;
	is($node->safe_psql($db,
			"SELECT code || ' ' || scopes::text FROM flowella.apikey_verify('$new_token')"),
		'VALID {analytics:read}', "updated from $from: a key created after the update verifies");
	$node->safe_psql($db, qq{
		BEGIN;
		SELECT flowella.set_actor('$admin', '203.0.113.9');
		SELECT flowella.apikey_set_scopes(key_id, NULL) FROM flowella.api_keys WHERE label = 'key 3';
		SELECT flowella.apikey_revoke(key_id) FROM flowella.api_keys WHERE label = 'after upgrade';
		SELECT flowella.member_set((SELECT org_id FROM flowella.orgs), '$admin', 'user');
		COMMIT;
	});
	is($node->safe_psql($db, qq{
			SELECT string_agg(action || ' ' || actor_user_id || ' ' || host(actor_ip)
							  || ' ' || (details ? 'prefix' OR details ? 'user_id'), ', '
							  ORDER BY event_id)
			  FROM flowella.audit_records WHERE event_id > $max_event}),
		"key.created $admin 203.0.113.9 true, key.scopes_changed $admin 203.0.113.9 true, "
		  . "key.revoked $admin 203.0.113.9 true, member.role_changed $admin 203.0.113.9 true",
		"updated from $from: audit records after the update: one per change, attributed, numbered on");
	is($node->safe_psql($db, "SELECT code FROM flowella.apikey_verify('$new_token')"),
		'REVOKED', "updated from $from: a revoke after the update is immediate");

	# 1.3 on the updated database: a key from before the update gets a
	# policy, verify applies it (a 1.1-style call has no client address),
	# a rotation with grace moves its expiry, each change audited.
	$max_event = $node->safe_psql($db, 'SELECT max(event_id) FROM flowella.audit_records');
	$node->safe_psql($db, qq{
		BEGIN;
		SELECT flowella.set_actor('$owner');
		SELECT flowella.apikey_set_policy(key_id, ARRAY['192.0.2.0/24']::cidr[], NULL)
		  FROM flowella.api_keys WHERE label = 'key 4' AND replaces_key_id IS NULL;
		COMMIT;
	});
	my $t4 = $before->{tokens}[3];
	is($node->safe_psql($db, qq{
			SELECT string_agg(code, ' ' ORDER BY n) FROM (
				SELECT 1 AS n, code FROM flowella.apikey_verify('$t4', 'messages:read', '192.0.2.9')
				UNION ALL SELECT 2, code FROM flowella.apikey_verify('$t4', 'messages:read', '198.51.100.9')
				UNION ALL SELECT 3, code FROM flowella.apikey_verify('$t4', 'messages:read')) v}),
		'VALID IP_DENIED IP_DENIED', "updated from $from: verify applies the allowlist of an old key");
	$out = $node->safe_psql($db, qq{
		BEGIN;
		SELECT flowella.set_actor('$owner');
		SELECT count(*) FROM flowella.apikey_replace(
			(SELECT key_id FROM flowella.api_keys WHERE label = 'key 4' AND replaces_key_id IS NULL),
			interval '1 hour');
		COMMIT;
	});
	is($node->safe_psql($db, qq{
			SELECT n.allowed_ips::text || ' ' || (o.expires_at <= now() + interval '1 hour')
			  FROM flowella.api_keys n JOIN flowella.api_keys o ON o.key_id = n.replaces_key_id
			 WHERE o.label = 'key 4' AND o.replaces_key_id IS NULL}),
		'{192.0.2.0/24} true',
		"updated from $from: the replacement of an old key copies its policy; the old one expires within the grace");
	is($node->safe_psql($db, qq{
			SELECT string_agg(action, ', ' ORDER BY event_id)
			  FROM flowella.audit_records WHERE event_id > $max_event}),
		'key.policy_changed, key.created, key.expiry_changed',
		"updated from $from: policy change and rotation with grace are audited");

	# The row check is in force on the updated table.
	my ($ret, $stdout, $stderr) = $node->psql($db, q{
		INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
		SELECT org_id, 'direct', 'flwl_live_NotAKey!', digest('x', 'sha256'), 'live', org_id
		  FROM flowella.orgs});
	like($stderr, qr/invalid value in column "prefix" of an API key row/,
		"updated from $from: the table refuses a malformed row");

	# Downgrading is not offered.
	($ret, $stdout, $stderr) = $node->psql($db, "ALTER EXTENSION flowella_apikey UPDATE TO '$from'");
	like($stderr, qr/no update path/, "updated from $from: no downgrade path");
}

$node->stop;
done_testing();
