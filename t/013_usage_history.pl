# The usage pipeline's guarantees that need a server of their own: exact
# counts with more distinct (key, client IP) pairs than the shared table
# holds; counts and last uses surviving a clean restart; retention pruning
# by the worker; a bucket written in two flush rounds read as one; what a
# crash may lose.  The table sums are read through the view
# flowella.api_key_usage (one row per bucket).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowellaTest;

# 100 buckets (75 for detail) and the longest interval: nothing is flushed
# before the test asks for it, unless the table fills.
my $node = preloaded_node('usage_history', q{
flowella.usage_max_buckets = 100
flowella.usage_flush_interval = 60
});

my $owner = 'fb000000-0000-4000-8000-000000000001';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION flowella_apikey;
	SELECT flowella.plan_set('pro', ARRAY['messages:send'], true);
	SELECT flowella.org_create('History Ltd', 'pro', '$owner');
	CREATE TABLE tokens (n int, key_id uuid, token text);
	BEGIN;
	SELECT flowella.set_actor('$owner');
	INSERT INTO tokens
	SELECT i, k.key_id, k.token FROM flowella.orgs o, generate_series(1, 20) i,
		   LATERAL flowella.apikey_create(o.org_id, 'key ' || i) k;
	COMMIT;
	-- apikey_verify with its client_ip argument (the SQL signature comes
	-- with the policy part of 1.3)
	CREATE FUNCTION verify_from(text, text, inet) RETURNS flowella.verification
	AS '\$libdir/flowella_apikey', 'flowella_apikey_verify' LANGUAGE C;
});

sub table_total
{
	return $node->safe_psql('postgres',
		'SELECT coalesce(sum(requests), 0) FROM flowella.api_key_usage');
}

sub wait_written
{
	my ($total, $what) = @_;
	ok($node->poll_query_until('postgres',
			"SELECT coalesce(sum(requests), 0) = $total FROM flowella.api_key_usage"),
		$what) or diag('table total: ' . table_total());
}

# 1. 20 keys x 50 client IPs = 1 000 distinct pairs, twice over, through a
# table of 100 buckets: folded into per-key rows, early rounds, exact.
my $calls = $node->safe_psql('postgres', q{
	SELECT count(*) FROM tokens t, generate_series(1, 50) ip, generate_series(1, 2) r,
		   LATERAL verify_from(t.token, 'messages:send',
							   ('10.1.0.' || ip)::inet + (r * 0)) v
	 WHERE v.code = 'VALID'});
is($calls, 2000, '2 000 verifies of 1 000 distinct (key, IP) pairs');
my ($folded, $overflowed) = split /\|/, $node->safe_psql('postgres',
	'SELECT requests_folded, requests_overflowed FROM flowella.usage_stats()');
cmp_ok($folded, '>', 0, "detail was folded ($folded requests)");
is($overflowed, 0, 'no request overflowed the reserve');
wait_written(2000, 'every request reached the table (early rounds, then the regular one)');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT key_id, sum(requests) s FROM flowella.api_key_usage
						   GROUP BY key_id) k WHERE s = 100}),
	'20', 'each key has exactly its 100 requests');
cmp_ok($node->safe_psql('postgres',
		'SELECT count(*) FROM flowella.api_key_usage WHERE client_ip IS NULL'),
	'>', 0, 'some of them in per-key rows without IP and scope');
ok($node->poll_query_until('postgres',
		'SELECT count(*) = 20 FROM flowella.api_keys WHERE last_used_at IS NOT NULL'),
	'last_used_at of every key was written');

# 2. A clean restart loses nothing: counts and last uses pending at the
# stop are saved and written after the start.
my $before = table_total();
my $restart_calls = $node->safe_psql('postgres', q{
	SELECT count(*) FROM tokens t, generate_series(1, 3) r,
		   LATERAL verify_from(t.token, NULL, '192.0.2.1'::inet + (r * 0)) v
	 WHERE t.n <= 5 AND v.code = 'VALID'});
is($restart_calls, 15, '15 more verifies of 5 keys');
my $last_before = $node->safe_psql('postgres',
	'SELECT max(last_used_at) FROM flowella.api_keys');
my $pending = $node->safe_psql('postgres',
	'SELECT requests_pending FROM flowella.usage_stats()');
is($pending, 15, 'they are pending in shared memory');
$node->stop;
ok(-f $node->data_dir . '/pg_stat/flowella_usage.stat', 'the clean stop saved them');
$node->start;
ok(!-f $node->data_dir . '/pg_stat/flowella_usage.stat', 'the start loaded and removed the file');
is($node->safe_psql('postgres', 'SELECT requests_pending FROM flowella.usage_stats()'),
	$pending, 'the pending counts are back');
$node->safe_psql('postgres',
	'ALTER SYSTEM SET flowella.usage_flush_interval = 1; SELECT pg_reload_conf()');
wait_written($before + 15, 'after the restart the table has every request');
is($node->safe_psql('postgres', q{
	SELECT sum(requests) FROM flowella.api_key_usage
	 WHERE client_ip = '192.0.2.1'}), '15', 'with their client IP');
ok($node->poll_query_until('postgres', qq{
	SELECT count(*) = 5 FROM flowella.api_keys k JOIN tokens t USING (key_id)
	 WHERE t.n <= 5 AND k.last_used_at > '$last_before'}),
	'and last_used_at of the 5 keys moved past the uses before the restart');

# 3. Retention: buckets older than flowella.usage_retention are deleted by
# the worker (in batches of 1 000), recent ones stay.
$node->safe_psql('postgres', q{
	INSERT INTO flowella.api_key_usage_log (org_id, key_id, minute, client_ips, scopes, codes, requests)
	SELECT k.org_id, k.key_id, date_trunc('minute', now()) - make_interval(hours => 2, mins => i),
		   '{NULL}', '{NULL}', '{VALID}', '{1}'
	  FROM flowella.api_keys k, generate_series(1, 150) i});
my $recent = $node->safe_psql('postgres',
	q{SELECT count(*) FROM flowella.api_key_usage WHERE minute > now() - interval '1 hour'});
$node->safe_psql('postgres',
	"ALTER SYSTEM SET flowella.usage_retention = '1 hour'; SELECT pg_reload_conf()");
# a use, so that the database has a flush round
$node->safe_psql('postgres', 'SELECT verify_from(token, NULL, NULL) FROM tokens WHERE n = 1');
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 0 FROM flowella.api_key_usage WHERE minute < now() - interval '1 hour'}),
	'3 000 old buckets were pruned');
cmp_ok($node->safe_psql('postgres',
		q{SELECT count(*) FROM flowella.api_key_usage WHERE minute > now() - interval '1 hour'}),
	'>=', $recent, 'recent ones stayed');
cmp_ok($node->safe_psql('postgres', 'SELECT rows_pruned FROM flowella.usage_stats()'),
	'>=', 3000, 'usage_stats counts them');

# 4. The same bucket flushed in two rounds: two rows of the table, one row
# of apikey_usage and of the view, its requests summed.  Both verifies must
# fall in one minute: start early in a minute (each round takes about 1 s),
# and on a machine so slow that the pair crossed a minute's end anyway, try
# again with the next client address (a bucket of its own).
# One request of the bucket, and the flush round that writes it (the
# number of rounds is read before the request, so that a round that has
# already written it counts).
sub request_and_round
{
	my ($ip) = @_;
	my $flushes = $node->safe_psql('postgres', 'SELECT flushes FROM flowella.usage_stats()');
	my $at = $node->safe_psql('postgres', qq{
		SELECT date_trunc('minute', now()) FROM tokens t,
			   LATERAL verify_from(t.token, 'messages:send', '$ip') v
		 WHERE t.n = 2});
	$node->poll_query_until('postgres', qq{
		SELECT flushes > $flushes AND requests_pending = 0 FROM flowella.usage_stats()})
	  or die 'no flush round';
	return $at;
}
my ($minute, $second, $ip);
for my $attempt (7 .. 16)
{
	$ip = "198.51.100.$attempt";
	$node->poll_query_until('postgres', q{SELECT extract(second FROM now()) < 30})
	  or die 'the clock does not move';
	$minute = request_and_round($ip);
	$second = request_and_round($ip);
	last if $second eq $minute;
}
is($second, $minute, 'a second request of the bucket in the same minute');
is($node->safe_psql('postgres', qq{
	SELECT count(*) FROM flowella.api_key_usage_log l JOIN tokens t USING (key_id)
	 WHERE t.n = 2 AND l.minute = '$minute' AND '$ip' = ANY (l.client_ips)}),
	'2', 'the two rounds wrote two rows');
is($node->safe_psql('postgres', qq{
	SELECT string_agg(u.minute || ' ' || u.scope || ' ' || u.code || ' ' || u.requests, ', ')
	  FROM tokens t, LATERAL flowella.apikey_usage(t.key_id) u
	 WHERE t.n = 2 AND u.client_ip = '$ip'}),
	"$minute messages:send VALID 2", 'apikey_usage shows the bucket once, summed');
is($node->safe_psql('postgres', qq{
	SELECT count(*) || ' ' || sum(u.requests)
	  FROM flowella.api_key_usage u JOIN tokens t USING (key_id)
	 WHERE t.n = 2 AND u.client_ip = '$ip'}),
	'1 2', 'and so does the view');

# 5. A crash (immediate stop) skips the dump: what was pending may be lost
# (at most what the last flush interval counted), never counted twice.
$node->safe_psql('postgres',
	"ALTER SYSTEM SET flowella.usage_flush_interval = 60; ALTER SYSTEM RESET flowella.usage_retention; SELECT pg_reload_conf()");
$node->poll_query_until('postgres', 'SELECT requests_pending = 0 FROM flowella.usage_stats()');
$before = table_total();
$node->safe_psql('postgres', q{
	SELECT count(*) FROM tokens t, LATERAL verify_from(t.token, NULL, '192.0.2.2') v});
$node->stop('immediate');
ok(!-f $node->data_dir . '/pg_stat/flowella_usage.stat', 'an immediate stop writes no file');
$node->start;
$node->safe_psql('postgres',
	'ALTER SYSTEM SET flowella.usage_flush_interval = 1; SELECT pg_reload_conf()');
$node->safe_psql('postgres', 'SELECT verify_from(token, NULL, NULL) FROM tokens WHERE n = 1');
ok($node->poll_query_until('postgres', 'SELECT requests_pending = 0 FROM flowella.usage_stats()'),
	'the pipeline runs after the crash');
my $after = table_total();
cmp_ok($after, '>=', $before + 1, 'the use after the crash was written');
cmp_ok($after, '<=', $before + 21, 'nothing was counted twice (the crash may lose up to 20)');

$node->stop;
done_testing();
