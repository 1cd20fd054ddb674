# Dump and restore (SPEC section 8): pg_dump -> pg_restore into a new
# database gives back the same keys (every token verifies the same), the
# same audit records with the same numbers, the same last-used values, the
# same usage history, and row-level security, guards and privileges still
# hold.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowellaTest;

my $node = preloaded_node('dump', q{
flowella.usage_flush_interval = 1
});

my $owner = 'd1000000-0000-4000-8000-000000000001';
my $other = 'd2000000-0000-4000-8000-000000000002';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION flowella_apikey;
	CREATE ROLE regress_mgr;
	GRANT flowella_apikey_manager TO regress_mgr;
	SELECT flowella.plan_set('pro', ARRAY['messages:send', 'messages:read', 'analytics:read'], true);
	SELECT flowella.org_create('First Ltd', 'pro', '$owner');
	SELECT flowella.org_create('Second Ltd', 'pro', '$other');
	SELECT flowella.member_set((SELECT org_id FROM flowella.orgs WHERE name = 'First Ltd'),
							   '$other', 'admin');
});

# five keys in the first org, two revoked, one with changed scopes, one expiring
my @tokens;
for my $i (1 .. 5)
{
	my $expiry = $i == 5 ? "now() + interval '30 days'" : 'NULL';
	my $out = $node->safe_psql('postgres', qq{
		BEGIN;
		SELECT flowella.set_actor('$owner', '192.0.2.$i',
			'00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333$i-01');
		SELECT token FROM flowella.apikey_create(
			(SELECT org_id FROM flowella.orgs WHERE name = 'First Ltd'),
			'key $i', ARRAY['messages:send', 'messages:read'], 'live', $expiry);
		COMMIT;
	});
	push @tokens, (grep { /^flwl_/ } split /\n/, $out)[0];
}
$node->safe_psql('postgres', qq{
	BEGIN;
	SELECT flowella.set_actor('$owner');
	SELECT flowella.apikey_revoke(key_id) FROM flowella.api_keys WHERE label IN ('key 1', 'key 2');
	SELECT flowella.apikey_set_scopes(key_id, ARRAY['messages:read'])
	  FROM flowella.api_keys WHERE label = 'key 3';
	COMMIT;
});
# uses, flushed to last_used_at
verify_uses($node, 'postgres', \@tokens, 3);
my %snap = snapshot_queries(@tokens);
my %before = take_snapshot($node, 'postgres', %snap);
# every request counted so far written to the usage history
$node->poll_query_until('postgres', 'SELECT requests_pending = 0 FROM flowella.usage_stats()')
  or die 'usage counts were not flushed';
my $usage_sql = q{SELECT key_id, minute, client_ip, scope, code, requests
					FROM flowella.api_key_usage ORDER BY 1, 2, 3, 4, 5};
my $usage_before = $node->safe_psql('postgres', $usage_sql);

my $dump = "$PostgreSQL::Test::Utils::tmp_check/flowella.dump";
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, 'postgres' ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', 'restored', $dump ], 'pg_restore');

like($usage_before, qr/VALID/, 'the usage history holds the uses');
is($node->safe_psql('restored', $usage_sql), $usage_before,
	'the usage history is the same after restore');
for my $what (snapshot_order(%snap))
{
	is($node->safe_psql('restored', $snap{$what}), $before{$what},
		"$what are the same after restore");
}
like($before{verify}, qr/REVOKED/, 'the compared verifications include REVOKED');
is($node->safe_psql('restored', 'SELECT count(*) FROM flowella.audit_records'),
	$node->safe_psql('postgres', 'SELECT count(*) FROM flowella.audit_records'),
	'restoring wrote no extra audit record');

# every record keeps its hash (1.5): nothing recomputes them, the chains
# verify (t/015 checks more)
my $hash_sql = q{SELECT event_id, encode(record_hash, 'hex') FROM flowella.audit_records
				  ORDER BY event_id};
is($node->safe_psql('restored', $hash_sql), $node->safe_psql('postgres', $hash_sql),
	'every audit record keeps its hash after restore');
is($node->safe_psql('restored', q{
	SELECT bool_and(v.ok) FROM flowella.orgs o, flowella.audit_verify(o.org_id) v}),
	't', 'the restored chains verify');

# numbering goes on where it stopped
my $last = $node->safe_psql('restored', 'SELECT max(event_id) FROM flowella.audit_records');
$node->safe_psql('restored', qq{
	BEGIN;
	SELECT flowella.set_actor('$owner');
	SELECT flowella.apikey_revoke(key_id) FROM flowella.api_keys WHERE label = 'key 4';
	COMMIT;
});
is($node->safe_psql('restored', 'SELECT max(event_id) FROM flowella.audit_records'),
	$last + 1, 'the next audit record follows the restored ones');

# security still holds
is($node->safe_psql('restored', q{
	SELECT string_agg(relname || ':' || relrowsecurity || relforcerowsecurity, ' ' ORDER BY relname)
	  FROM pg_class WHERE relnamespace = 'flowella'::regnamespace AND relkind = 'r'}),
	'api_key_usage_log:truetrue api_keys:truetrue audit_records:truetrue members:truetrue orgs:truetrue plans:truetrue usage_submissions:truetrue',
	'row-level security enabled and forced on every table');
is($node->safe_psql('restored', q{
	SELECT count(*) FROM pg_trigger
	 WHERE tgrelid IN ('flowella.api_keys'::regclass, 'flowella.audit_records'::regclass)
	   AND tgname LIKE '%guard' AND tgenabled = 'A'}),
	'4', 'the guards are enabled always');
my ($ret, $out, $err) = $node->psql('restored', 'DELETE FROM flowella.audit_records');
like($err, qr/not allowed/, 'the audit trail is still append-only');
is($node->safe_psql('restored', qq{
	SET ROLE regress_mgr;
	BEGIN;
	SELECT flowella.set_actor('$other');
	SELECT string_agg(name, ',' ORDER BY name) FROM flowella.orgs;
	COMMIT;
}), "\nFirst Ltd,Second Ltd", 'a manager sees the orgs its actor manages');
($ret, $out, $err) = $node->psql('restored',
	'SET ROLE regress_mgr; SELECT secret_hash FROM flowella.api_keys');
like($err, qr/permission denied/, 'secret_hash stays unreadable');

$node->stop;
done_testing();
