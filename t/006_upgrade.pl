# Upgrades: ALTER EXTENSION flowella_apikey UPDATE from 1.0 gives the same
# objects as a fresh install of the current version (compared as catalog
# listings: every member object with its definition, ACL and flags), keeps
# every key, token, audit record and last use as it was, and the API then
# works on the upgraded database as on a fresh one.
use strict;
use warnings;
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

my $owner = 'e1000000-0000-4000-8000-000000000001';
my $admin = 'e1000000-0000-4000-8000-000000000002';

# A database on 1.0 with keys in every state and member changes.
$node->safe_psql('postgres', 'CREATE DATABASE old_db');
$node->safe_psql('old_db', qq{
	CREATE EXTENSION pgcrypto;
	CREATE EXTENSION flowella_apikey VERSION '1.0';
	SELECT flowella.plan_set('pro', ARRAY['messages:send', 'messages:read', 'analytics:read'], true);
	SELECT flowella.org_create('Old Ltd', 'pro', '$owner');
	SELECT flowella.member_set((SELECT org_id FROM flowella.orgs), '$admin', 'admin');
});
is($node->safe_psql('old_db',
		"SELECT extversion FROM pg_extension WHERE extname = 'flowella_apikey'"),
	'1.0', 'old_db starts on 1.0');

my @tokens;
for my $i (1 .. 4)
{
	my $expiry = $i == 4 ? "now() + interval '30 days'" : 'NULL';
	my $out = $node->safe_psql('old_db', qq{
		BEGIN;
		SELECT flowella.set_actor('$owner', '198.51.100.$i');
		SELECT token FROM flowella.apikey_create((SELECT org_id FROM flowella.orgs),
			'key $i', ARRAY['messages:send', 'messages:read'], 'live', $expiry);
		COMMIT;
	});
	push @tokens, (grep { /^flwl_/ } split /\n/, $out)[0];
}
$node->safe_psql('old_db', qq{
	BEGIN;
	SELECT flowella.set_actor('$owner');
	SELECT flowella.apikey_revoke(key_id) FROM flowella.api_keys WHERE label = 'key 1';
	SELECT flowella.apikey_set_scopes(key_id, ARRAY['messages:read'])
	  FROM flowella.api_keys WHERE label = 'key 2';
	COMMIT;
});
verify_uses($node, 'old_db', \@tokens, 3);
my %snap = snapshot_queries(@tokens);
my %before = take_snapshot($node, 'old_db', %snap);
like($before{verify}, qr/REVOKED.*VALID.*VALID.*VALID/s, 'tokens verify on 1.0');

$node->safe_psql('old_db', 'ALTER EXTENSION flowella_apikey UPDATE');
is($node->safe_psql('old_db',
		"SELECT extversion FROM pg_extension WHERE extname = 'flowella_apikey'"),
	$default_version, "old_db updated to $default_version");

# A fresh install of the current version, in its own database (the roles
# are cluster-wide and already exist: the install script must accept them).
$node->safe_psql('postgres', 'CREATE DATABASE fresh_db');
$node->safe_psql('fresh_db', 'CREATE EXTENSION pgcrypto; CREATE EXTENSION flowella_apikey');

# Every member object of the extension with its definition, ACL and flags
# (FlowellaTest::catalog_listing); a failure shows the diff.
my $upgraded = catalog_listing($node, 'old_db');
my $fresh = catalog_listing($node, 'fresh_db');
cmp_ok(scalar(split /\n/, $fresh), '>', 200, 'the catalog listing is not trivially small');
listing_is($upgraded, $fresh, 'upgraded objects equal a fresh install (catalog listing, in order)');

# Data untouched; tokens verify the same.
for my $what (snapshot_order(%snap))
{
	is($node->safe_psql('old_db', $snap{$what}), $before{$what}, "$what unchanged by the update");
}

# The API on the upgraded database: create, revoke and change scopes write
# their audit records, numbered after the old ones, attributed as before.
my $max_event = $node->safe_psql('old_db', 'SELECT max(event_id) FROM flowella.audit_records');
my $out = $node->safe_psql('old_db', qq{
	BEGIN;
	SELECT flowella.set_actor('$admin', '203.0.113.9');
	SELECT token FROM flowella.apikey_create((SELECT org_id FROM flowella.orgs),
		'after upgrade', ARRAY['analytics:read']);
	COMMIT;
});
my ($new_token) = grep { /^flwl_/ } split /\n/, $out;
is($node->safe_psql('old_db',
		"SELECT code || ' ' || scopes::text FROM flowella.apikey_verify('$new_token')"),
	'VALID {analytics:read}', 'a key created after the update verifies');
$node->safe_psql('old_db', qq{
	BEGIN;
	SELECT flowella.set_actor('$admin', '203.0.113.9');
	SELECT flowella.apikey_set_scopes(key_id, NULL) FROM flowella.api_keys WHERE label = 'key 3';
	SELECT flowella.apikey_revoke(key_id) FROM flowella.api_keys WHERE label = 'after upgrade';
	SELECT flowella.member_set((SELECT org_id FROM flowella.orgs), '$admin', 'user');
	COMMIT;
});
is($node->safe_psql('old_db', qq{
		SELECT string_agg(action || ' ' || actor_user_id || ' ' || host(actor_ip)
						  || ' ' || (details ? 'prefix' OR details ? 'user_id'), ', '
						  ORDER BY event_id)
		  FROM flowella.audit_records WHERE event_id > $max_event}),
	"key.created $admin 203.0.113.9 true, key.scopes_changed $admin 203.0.113.9 true, "
	  . "key.revoked $admin 203.0.113.9 true, member.role_changed $admin 203.0.113.9 true",
	'audit records after the update: one per change, attributed, numbered on');
is($node->safe_psql('old_db', "SELECT code FROM flowella.apikey_verify('$new_token')"),
	'REVOKED', 'a revoke after the update is immediate');

# The new row check is in force on the upgraded table.
my ($ret, $stdout, $stderr) = $node->psql('old_db', q{
	INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
	SELECT org_id, 'direct', 'flwl_live_NotAKey!', digest('x', 'sha256'), 'live', org_id
	  FROM flowella.orgs});
like($stderr, qr/invalid value in column "prefix" of an API key row/,
	'upgraded table refuses a malformed row');

# Downgrading is not offered.
($ret, $stdout, $stderr) = $node->psql('old_db', "ALTER EXTENSION flowella_apikey UPDATE TO '1.0'");
like($stderr, qr/no update path/, 'no downgrade path');

$node->stop;
done_testing();
