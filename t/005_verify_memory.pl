# A backend's memory stays flat over 1 000 000 verifies: nothing that one
# call allocates outlives it (pg_backend_memory_contexts before and after).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowellaTest;

my $node = preloaded_node('memory');

my $owner = 'f1000000-0000-4000-8000-000000000001';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION flowella_apikey;
	SELECT flowella.plan_set('pro', ARRAY['messages:send', 'messages:read'], true);
	SELECT flowella.org_create('Memory Ltd', 'pro', '$owner');
	CREATE TABLE t AS SELECT 0 AS i, ''::text AS token WHERE false;
	BEGIN;
	SELECT flowella.set_actor('$owner');
	INSERT INTO t SELECT g, k.token FROM generate_series(1, 100) g,
		LATERAL flowella.apikey_create((SELECT org_id FROM flowella.orgs), 'k' || g,
									   ARRAY['messages:send']) k;
	SELECT flowella.apikey_revoke(key_id) FROM flowella.api_keys WHERE label = 'k1';
	COMMIT;
});

my $session = $node->background_psql('postgres');
my $mem = q{SELECT sum(total_bytes) FROM pg_backend_memory_contexts};
# every outcome, in batches of 100 000 calls, one statement each
my $batch = q{
	SELECT count(*) FROM generate_series(1, 1000) g, t,
		LATERAL flowella.apikey_verify(
			CASE g % 4 WHEN 0 THEN t.token
					   WHEN 1 THEN left(t.token, 55)
					   WHEN 2 THEN t.token
					   ELSE 'flwl_live_' || repeat('x', 46) END,
			CASE g % 2 WHEN 0 THEN 'messages:send' ELSE 'messages:read' END) v
	 WHERE v.code IS NOT NULL};

$session->query_safe($batch);
my $before = $session->query_safe($mem);
for (2 .. 10)
{
	is($session->query_safe($batch), '100000', "batch $_ of 100 000 verifies");
}
my $after = $session->query_safe($mem);
note("backend memory: $before bytes after 100 000 verifies, $after after 1 000 000");
cmp_ok($after, '<=', $before + 64 * 1024,
	'backend memory stays flat over 1 000 000 verifies');
$session->quit;

$node->stop;
done_testing();
