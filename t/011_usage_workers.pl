# The usage workers under operator actions: pg_cancel_backend on the
# launcher does not end it, and the uses of a database whose flush worker
# cannot connect (ALLOW_CONNECTIONS false) are given up after a bounded
# number of rounds instead of staying pending forever.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowellaTest;

my $node = preloaded_node('usage_workers', q{
flowella.usage_flush_interval = 1
});

my $owner = 'f2000000-0000-4000-8000-000000000001';
$node->safe_psql('postgres', 'CREATE EXTENSION flowella_apikey');
$node->safe_psql('postgres', 'CREATE DATABASE frozen');
my $out = $node->safe_psql('frozen', qq{
	CREATE EXTENSION flowella_apikey;
	SELECT flowella.plan_set('pro', ARRAY['messages:send'], true);
	BEGIN;
	SELECT flowella.set_actor('$owner');
	SELECT token FROM flowella.apikey_create(
		flowella.org_create('Workers Ltd', 'pro', '$owner'), 'k');
	COMMIT;
});
my ($token) = grep { /^flwl_/ } split /\n/, $out;
ok(defined $token, 'a key was made');

sub count_in_log
{
	my ($pattern, $from) = @_;
	my @hits = substr(slurp_file($node->logfile), $from) =~ /$pattern/g;
	return scalar @hits;
}

# 1. pg_cancel_backend on the launcher: it keeps running and flushing.
my $launcher_sql =
  "SELECT pid FROM pg_stat_activity WHERE backend_type = 'flowella usage launcher'";
my $launcher = $node->safe_psql('postgres', $launcher_sql);
like($launcher, qr/^\d+$/, 'the launcher runs');
my $log_start = -s $node->logfile;
is($node->safe_psql('postgres', "SELECT pg_cancel_backend($launcher)"), 't',
	'the launcher is sent SIGINT');
is($node->safe_psql('frozen', "SELECT code FROM flowella.apikey_verify('$token')"),
	'VALID', 'a use after the cancel');
ok($node->poll_query_until('frozen',
		'SELECT last_used_at IS NOT NULL FROM flowella.api_keys'),
	'the use is flushed');
is($node->safe_psql('postgres', $launcher_sql), $launcher,
	'the same launcher did it: the cancel did not end it');
is(count_in_log(qr/canceling statement due to user request/, $log_start), 0,
	'nothing was cancelled');

# 2. A use pending in a database that refuses new connections: a session
# opened before the ALTER records it, no flush worker can connect.
my $session = $node->background_psql('frozen');
$node->safe_psql('postgres', 'ALTER DATABASE frozen ALLOW_CONNECTIONS false');
$log_start = -s $node->logfile;
# a key the first part did not use, so its last_used_at shows any write
$session->query_safe(qq{
	BEGIN;
	SELECT flowella.set_actor('$owner');
	CREATE TEMP TABLE k2 AS
	  SELECT * FROM flowella.apikey_create((SELECT org_id FROM flowella.orgs), 'k2');
	COMMIT;
});
is($session->query_safe('SELECT code FROM k2, flowella.apikey_verify(k2.token)'),
	'VALID', 'a use in the database that refuses connections');
ok($node->poll_query_until('postgres', 'SELECT pending = 0 FROM flowella.usage_stats()'),
	'the use is given up, not kept pending forever');
my $failed = count_in_log(qr/ended before writing its last uses/, $log_start);
cmp_ok($failed, '>=', 1, "the failed rounds were logged ($failed)");
cmp_ok($failed, '<=', 6, 'a bounded number of times');
is($session->query_safe(
		'SELECT k.last_used_at IS NULL FROM flowella.api_keys k JOIN k2 USING (key_id)'),
	't', 'nothing was written');
$session->quit;
$node->safe_psql('postgres', 'ALTER DATABASE frozen ALLOW_CONNECTIONS true');

$node->stop;
done_testing();
