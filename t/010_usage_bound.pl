# The last-used table holds at most flowella.usage_max_keys keys and never
# takes more shared memory than it was given at start: a use beyond the
# bound is dropped and counted, and the main shared memory segment's free
# space, which every database's lock table grows into, stays as it was.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowellaTest;

# The longest interval: no flush round comes within the few seconds below.
my $node = preloaded_node('usage_bound', q{
flowella.usage_max_keys = 100
flowella.usage_flush_interval = 60
});

my $owner = 'fa000000-0000-4000-8000-000000000001';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION flowella_apikey;
	SELECT flowella.plan_set('pro', ARRAY['messages:send'], true);
	SELECT flowella.org_create('Bound Ltd', 'pro', '$owner');
	CREATE TABLE tokens (token text);
	BEGIN;
	SELECT flowella.set_actor('$owner');
	INSERT INTO tokens
	SELECT k.token FROM flowella.orgs o, generate_series(1, 300) i,
		   LATERAL flowella.apikey_create(o.org_id, 'key ' || i) k;
	COMMIT;
});

my $free_sql = 'SELECT size FROM pg_shmem_allocations WHERE name IS NULL';
my $free_before = $node->safe_psql('postgres', $free_sql);

is($node->safe_psql('postgres', q{
	SELECT count(*) FILTER (WHERE v.code = 'VALID')
	  FROM tokens t, LATERAL flowella.apikey_verify(t.token) v}),
	'300', 'each of 300 keys verified once');

my ($pending, $recorded, $dropped, $flushed) = split /\|/, $node->safe_psql('postgres',
	'SELECT pending, recorded, dropped, rows_updated FROM flowella.usage_stats()');
is($pending, 100, 'pending stops at usage_max_keys');
is($recorded, 300, 'every use was noted');
is($dropped + $pending + $flushed, 300, 'the uses beyond the bound were dropped and counted');
is($node->safe_psql('postgres', $free_sql), $free_before,
	'the table took no shared memory beyond its own');

# Once flushed, the table takes new keys again, up to the same bound.
$node->safe_psql('postgres', 'ALTER SYSTEM SET flowella.usage_flush_interval = 1; SELECT pg_reload_conf()');
ok($node->poll_query_until('postgres',
		'SELECT pending = 0 FROM flowella.usage_stats()'),
	'the kept uses are flushed');
is($node->safe_psql('postgres',
		'SELECT count(*) FROM flowella.api_keys WHERE last_used_at IS NOT NULL'),
	'100', 'the kept uses were written');
$node->safe_psql('postgres', q{
	SELECT count(*) FROM tokens t, LATERAL flowella.apikey_verify(t.token) v});
cmp_ok($node->safe_psql('postgres', 'SELECT pending FROM flowella.usage_stats()'),
	'<=', 100, 'pending stays within the bound');
is($node->safe_psql('postgres', $free_sql), $free_before,
	'free shared memory is still what it was');

$node->stop;
done_testing();
