# Hot standbys (SPEC §13): a primary and two hot standbys made from its
# backup, streaming; "sync" is in synchronous_standby_names and the primary
# commits with synchronous_commit = remote_apply, "async" is not listed.
#
# - verify on either standby answers what the primary answers, once the
#   change is replayed: at once on "sync", after a poll on "async";
# - a revoke's COMMIT returns only once "sync" answers REVOKED (asked right
#   after, no poll), while "async", its replay paused, still answers VALID
#   with the revoke's WAL received: that is replay lag; resumed, it
#   answers REVOKED; so do sessions that verified the key before (their
#   key cache drops it as the commit is replayed);
# - with "sync"'s replay paused, a revoke's COMMIT waits (SyncRep) and the
#   key stays VALID on "sync" and on the primary until it is applied;
# - each server has its own rate-limit bucket (SPEC §11);
# - with the primary stopped both standbys keep answering;
# - a standby records no usage while flowella.usage_primary_conninfo is
#   empty; set, each standby hands its counts and last uses to the primary
#   (logging in as a role granted flowella_apikey_replica) and they arrive
#   exactly: also when the answer to a batch is lost (the primary applied
#   it, the standby sends it again: counted once), and when the primary was
#   stopped meanwhile (kept, then sent once it is back);
# - once promoted, a standby records usage like a primary: its own
#   requests reach its own api_key_usage, beside those it forwarded before,
#   which it replayed; a batch in flight at the promotion (applied by the
#   primary, its answer lost) is counted once.
#
# No step sleeps: everything that takes time is polled for.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', q{
shared_preload_libraries = 'flowella_apikey'
flowella.usage_flush_interval = 1
});
$primary->start;
$primary->backup('base');

# The standbys take the primary's postgresql.conf with the backup (preload
# and flush interval included); the synchronous settings are the primary's
# alone and are added after the backup, so that a promoted standby does not
# wait for a synchronous standby of its own.
my %standby;
for my $name ('sync', 'async')
{
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init_from_backup($primary, 'base', has_streaming => 1);
	$node->start;
	$standby{$name} = $node;
}
my ($sync, $async) = @standby{ 'sync', 'async' };
my @standbys = ($sync, $async);

$primary->append_conf('postgresql.conf', q{
synchronous_standby_names = 'sync'
synchronous_commit = remote_apply
});
$primary->reload;
ok($primary->poll_query_until('postgres', q{
	SELECT string_agg(application_name || '=' || sync_state, ' ' ORDER BY application_name)
	  FROM pg_stat_replication WHERE state = 'streaming'}, 'async=async sync=sync'),
	'the primary streams to "sync" synchronously and to "async" asynchronously');
for my $node ($primary, @standbys)
{
	is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'), 'flowella_apikey',
		$node->name . ' preloads the library');
}
is($sync->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'sync is a hot standby');
is($async->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'async is a hot standby');

# Keys, made on the primary; their tokens in table "tokens", which the
# standbys read as it is replayed.  "ghost" is well formed but its key was
# rolled back; "malformed" is not a token.
my $owner = 'fc000000-0000-4000-8000-000000000014';
$primary->safe_psql('postgres', qq{
	CREATE EXTENSION flowella_apikey;
	SELECT flowella.plan_set('pro', ARRAY['messages:send', 'messages:read'], true);
	SELECT flowella.org_create('Replicas Ltd', 'pro', '$owner');
	CREATE TABLE tokens (name text PRIMARY KEY, token text, key_id uuid);
	BEGIN;
	SELECT flowella.set_actor('$owner');
	INSERT INTO tokens
	SELECT n.name, k.token, k.key_id
	  FROM unnest(ARRAY['live', 'revoked', 'held', 'narrow', 'allowlist', 'limited',
						'promo', 'fwd', 'lost', 'down', 'inflight'])
			AS n(name),
		   flowella.orgs o,
		   LATERAL flowella.apikey_create(o.org_id, 'key ' || n.name,
			   CASE n.name WHEN 'narrow' THEN ARRAY['messages:read'] END) k;
	SELECT flowella.apikey_set_policy(key_id, ARRAY['203.0.113.0/24']::cidr[], NULL)
	  FROM tokens WHERE name = 'allowlist';
	SELECT flowella.apikey_set_policy(key_id, NULL, 3) FROM tokens WHERE name = 'limited';
	COMMIT;
});
my $ghost = (grep { /^flwl_/ } split /\n/, $primary->safe_psql('postgres', qq{
	BEGIN;
	SELECT flowella.set_actor('$owner');
	SELECT k.token FROM flowella.orgs o, LATERAL flowella.apikey_create(o.org_id, 'ghost') k;
	ROLLBACK;
}))[0];
ok(defined $ghost, 'a well-formed token whose key was rolled back');
$primary->safe_psql('postgres', qq{
	INSERT INTO tokens VALUES ('ghost', '$ghost', NULL), ('malformed', 'flwl_live_nope', NULL);
});

# One verify of the named token on $node: every column of the answer
# ("valid|code|key matches|org_id|scopes|mode|remaining|retry").
sub verify_on
{
	my ($node, $name, $scope, $ip) = @_;
	$scope = defined $scope ? "'$scope'" : 'NULL';
	$ip = defined $ip ? "'$ip'::inet" : 'NULL::inet';
	return $node->safe_psql('postgres', qq{
		SELECT v.valid, v.code, v.key_id IS NOT DISTINCT FROM t.key_id, v.org_id,
			   v.scopes, v.mode, v.ratelimit_remaining, v.retry_after_ms
		  FROM tokens t, LATERAL flowella.apikey_verify(t.token, $scope, $ip) v
		 WHERE t.name = '$name'});
}

# Just the code.
sub code_on
{
	my ($node, $name, $scope, $ip) = @_;
	return (split /\|/, verify_on($node, $name, $scope, $ip))[1];
}

# $n verifies of the named token in one statement, in order: the codes.
# The lateral reference to i makes each row its own call.
sub burst_on
{
	my ($node, $name, $n) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT string_agg(v.code, ' ' ORDER BY i)
		  FROM generate_series(1, $n) i, tokens t,
			   LATERAL flowella.apikey_verify(CASE WHEN i > 0 THEN t.token END) v
		 WHERE t.name = '$name'});
}

# 1. The keys are on "sync" as soon as their COMMIT returned (remote_apply:
# no poll), and on "async" once replayed.
is(code_on($sync, 'live'), 'VALID', 'sync: a key made on the primary is VALID at once');
ok($async->poll_query_until('postgres',
		q{SELECT count(*) = 13 FROM tokens}),
	'async: the keys are replayed');
$primary->wait_for_catchup($async);
is(code_on($async, 'live'), 'VALID', 'async: the key is VALID once replayed');

# Every answer, on each standby, as the primary gives it.
my @cases = (
	[ 'live', undef, undef, 'VALID' ],
	[ 'live', 'messages:send', '198.51.100.7', 'VALID' ],
	[ 'malformed', undef, undef, 'MALFORMED' ],
	[ 'ghost', undef, undef, 'NOT_FOUND' ],
	[ 'narrow', 'messages:send', undef, 'INSUFFICIENT_SCOPE' ],
	[ 'narrow', 'messages:read', undef, 'VALID' ],
	[ 'allowlist', 'messages:send', '198.51.100.7', 'IP_DENIED' ],
	[ 'allowlist', 'messages:send', undef, 'IP_DENIED' ],
	[ 'allowlist', 'messages:send', '203.0.113.9', 'VALID' ],);
for my $c (@cases)
{
	my ($name, $scope, $ip, $code) = @$c;
	my $what = "$name, scope " . ($scope // 'none') . ', from ' . ($ip // 'nowhere');
	my $on_primary = verify_on($primary, $name, $scope, $ip);
	is((split /\|/, $on_primary)[1], $code, "primary: $what is $code");
	for my $node (@standbys)
	{
		is(verify_on($node, $name, $scope, $ip), $on_primary,
			$node->name . ": $what, the primary's answer");
	}
}

# 2. Revocation.  "async" is made to lag: its replay is paused (it still
# receives WAL).  On each standby one session verifies the key before the
# revoke, so that its key cache holds the row, and again after: the
# replayed commit's invalidation must reach it.
my %cached;
for my $node ($sync, $async)
{
	$cached{ $node->name } = $node->background_psql('postgres');
	is($cached{ $node->name }->query_safe(q{
		SELECT v.code FROM tokens t, LATERAL flowella.apikey_verify(t.token) v
		 WHERE t.name = 'revoked'}), 'VALID',
		$node->name . ': a session verifies the key before the revoke');
}
sub cached_code
{
	my ($node) = @_;
	return $cached{ $node->name }->query_safe(q{
		SELECT v.code FROM tokens t, LATERAL flowella.apikey_verify(t.token) v
		 WHERE t.name = 'revoked'});
}
is($async->safe_psql('postgres', 'SELECT pg_wal_replay_pause()'), '',
	'async: replay paused');
$primary->safe_psql('postgres', qq{
	BEGIN;
	SELECT flowella.set_actor('$owner');
	SELECT flowella.apikey_revoke(key_id) FROM tokens WHERE name = 'revoked';
	COMMIT;
});
# asked right after the COMMIT returned: no poll, no sleep
is(code_on($sync, 'revoked'), 'REVOKED',
	'sync: REVOKED as soon as the revoke\'s COMMIT returned');
is(cached_code($sync), 'REVOKED',
	'sync: REVOKED at once in the session that had the key cached');
is(code_on($primary, 'revoked'), 'REVOKED', 'primary: REVOKED');
my $revoke_lsn = $primary->lsn('flush');
ok($async->poll_query_until('postgres', qq{
	SELECT pg_last_wal_receive_lsn() >= '$revoke_lsn'
	   AND pg_get_wal_replay_pause_state() = 'paused'}),
	'async: the revoke\'s WAL is received, replay is paused');
is($async->safe_psql('postgres', "SELECT pg_last_wal_replay_lsn() < '$revoke_lsn'"), 't',
	'async: ... and not replayed');
is(code_on($async, 'revoked'), 'VALID',
	'async: the revoked key is still VALID while the revoke is not replayed (replay lag)');
is(cached_code($async), 'VALID', 'async: ... also in the session that has it cached');
is($primary->safe_psql('postgres', qq{
	SELECT sent_lsn >= '$revoke_lsn' AND replay_lsn < '$revoke_lsn'
	  FROM pg_stat_replication WHERE application_name = 'async'}),
	't', 'primary: pg_stat_replication shows async\'s replay behind what was sent');
$async->safe_psql('postgres', 'SELECT pg_wal_replay_resume()');
ok($async->poll_query_until('postgres', q{
	SELECT v.code = 'REVOKED'
	  FROM tokens t, LATERAL flowella.apikey_verify(t.token) v WHERE t.name = 'revoked'}),
	'async: REVOKED once replayed');
# replayed: the commit's invalidation was sent before replay went on, so
# the session that had the key cached answers REVOKED without a poll
ok($async->poll_query_until('postgres', qq{
	SELECT pg_last_wal_replay_lsn() >= '$revoke_lsn'}), 'async: the revoke is replayed');
is(cached_code($async), 'REVOKED', 'async: REVOKED in the session that had the key cached');
$cached{$_}->quit for keys %cached;
is(code_on($async, 'live'), 'VALID', 'async: the other key is still VALID');

# The COMMIT waits for "sync": with its replay paused, a revoke has
# committed on the primary (its commit record is flushed) but its COMMIT
# does not return, and it is not seen even on the primary until "sync" has
# applied it.
my $held = $primary->background_psql('postgres');
my $held_pid = $held->query_safe('SELECT pg_backend_pid()');
$sync->safe_psql('postgres', 'SELECT pg_wal_replay_pause()');
$held->query_until(qr/revoking/, qq{
	\\echo revoking
	BEGIN;
	SELECT flowella.set_actor('$owner');
	SELECT flowella.apikey_revoke(key_id) FROM tokens WHERE name = 'held';
	COMMIT;
	\\echo committed
});
ok($primary->poll_query_until('postgres', qq{
	SELECT wait_event = 'SyncRep' FROM pg_stat_activity WHERE pid = $held_pid}),
	'primary: the revoke\'s COMMIT waits for the synchronous standby');
ok($sync->poll_query_until('postgres', q{
	SELECT pg_get_wal_replay_pause_state() = 'paused'
	   AND pg_last_wal_replay_lsn() < pg_last_wal_receive_lsn()}),
	'sync: the revoke\'s WAL is received, its replay paused');
is(code_on($sync, 'held'), 'VALID', 'sync: replay paused, the key is still VALID');
is(code_on($primary, 'held'), 'VALID',
	'primary: ... and so it is there too, until sync has applied the revoke');
$sync->safe_psql('postgres', 'SELECT pg_wal_replay_resume()');
$held->query_until(qr/committed/, '');
is(code_on($sync, 'held'), 'REVOKED', 'sync resumed: the COMMIT returned, REVOKED at once');
is(code_on($primary, 'held'), 'REVOKED', 'primary: REVOKED');
$held->quit;

# 3. Rate limits are per server: 3 a minute (one more every 20 s), so a
# burst of 4 in one statement gives 3 VALID, then RATE_LIMITED, on each
# standby from its own full bucket; the primary's bucket is untouched.
is(burst_on($sync, 'limited', 4), 'VALID VALID VALID RATE_LIMITED',
	'sync: 3 VALID, then RATE_LIMITED');
is(burst_on($async, 'limited', 4), 'VALID VALID VALID RATE_LIMITED',
	'async: its own bucket of 3, then RATE_LIMITED');
like(verify_on($primary, 'limited'), qr/^t\|VALID\|t\|.*\|2\|$/,
	'primary: its own full bucket (VALID, 2 left)');

# 4. A standby records no usage while flowella.usage_primary_conninfo is
# empty: nothing is counted (its launcher runs, with nothing to do).
for my $node (@standbys)
{
	is($node->safe_psql('postgres', q{
		SELECT requests_counted, recorded, pending, buckets FROM flowella.usage_stats()}),
		'0|0|0|0', $node->name . ': no request counted, no use noted');
}
cmp_ok($primary->safe_psql('postgres', 'SELECT requests_counted FROM flowella.usage_stats()'),
	'>', 0, 'primary: its own verifies are counted');

# Forwarding: both standbys log in to the primary as "forwarder", granted
# flowella_apikey_replica only.
$primary->safe_psql('postgres',
	'CREATE ROLE forwarder LOGIN IN ROLE flowella_apikey_replica');
# "sync" is told in its postgresql.conf; "async" only through the
# database's own setting, made on the primary and replayed (the setting is
# per database).
my $conninfo = 'host=' . $primary->host . ' port=' . $primary->port . ' user=forwarder';
$sync->append_conf('postgresql.conf', "flowella.usage_primary_conninfo = '$conninfo'");
$sync->reload;
$primary->safe_psql('postgres',
	"ALTER DATABASE postgres SET flowella.usage_primary_conninfo = '$conninfo'");
for my $node (@standbys)
{
	ok($node->poll_query_until('postgres',
			q{SELECT current_setting('flowella.usage_primary_conninfo') <> ''}),
		$node->name . ': forwarding set');
}
is($async->safe_psql('postgres', q{
	SELECT count(*) FROM pg_file_settings WHERE name = 'flowella.usage_primary_conninfo'}),
	'0', 'async: not from its configuration files');

# The requests of a key on the primary, by client address and code (summed
# over the minutes: a run may cross a minute's end).
my $fwd_rows = q{
	SELECT string_agg(ip || ' ' || code || ' ' || n, ', ' ORDER BY ip, code)
	  FROM (SELECT host(u.client_ip) AS ip, u.code, sum(u.requests) AS n
			  FROM flowella.api_key_usage u JOIN tokens t USING (key_id)
			 WHERE t.name = '%s' GROUP BY 1, 2) s};
my $sum_of = q{
	SELECT coalesce(sum(u.requests), 0) FROM flowella.api_key_usage u
	  JOIN tokens t USING (key_id) WHERE t.name = '%s'};

# 40 verifies of "fwd" on "sync" from two addresses, 25 on "async", one of
# them refused for its scope.
sub verify_many
{
	my ($node, $name, $n, $ip, $scope) = @_;
	$scope //= 'messages:send';
	return $node->safe_psql('postgres', qq{
		SELECT count(*) FROM generate_series(1, $n) i, tokens t,
			 LATERAL flowella.apikey_verify(CASE WHEN i > 0 THEN t.token END,
											'$scope', '$ip') v
		 WHERE t.name = '$name'});
}
verify_many($sync, 'fwd', 30, '198.51.100.1');
verify_many($sync, 'fwd', 10, '198.51.100.2');
verify_many($async, 'fwd', 24, '198.51.100.2');
verify_many($async, 'fwd', 1, '198.51.100.2', 'admin:all');
ok($primary->poll_query_until('postgres', sprintf($sum_of, 'fwd'), '65'),
	'primary: the 65 requests of both standbys arrive');
is($primary->safe_psql('postgres', sprintf($fwd_rows, 'fwd')),
	'198.51.100.1 VALID 30, 198.51.100.2 INSUFFICIENT_SCOPE 1, 198.51.100.2 VALID 34',
	'primary: by client address and code, exactly');
ok($primary->poll_query_until('postgres', q{
	SELECT k.last_used_at IS NOT NULL FROM flowella.api_keys k
	  JOIN tokens t USING (key_id) WHERE t.name = 'fwd'}),
	'primary: the standbys\' last use is written');
for my $node (@standbys)
{
	ok($node->poll_query_until('postgres', q{
		SELECT requests_pending = 0 AND requests_written = requests_counted
		   AND pending = 0
		  FROM flowella.usage_stats()}),
		$node->name . ': everything it counted is handed over');
}
is($primary->safe_psql('postgres', q{SELECT count(*) FROM flowella.usage_submissions}),
	'2', 'primary: one source per standby');

# The replica role may submit counts, nothing else.
my ($rc, $out, $err) = $primary->psql('postgres',
	'SELECT count(*) FROM flowella.api_keys', extra_params => [ '-U', 'forwarder' ]);
like($err, qr/permission denied/, 'forwarder: cannot read the keys');
($rc, $out, $err) = $primary->psql('postgres',
	q{SELECT flowella.usage_submit(gen_random_uuid(), 1, ARRAY[gen_random_uuid()],
		ARRAY[date_trunc('minute', now())], ARRAY[NULL::inet], ARRAY[NULL::text],
		ARRAY['VALID'], ARRAY[0::bigint], '{}', '{}')},
	extra_params => [ '-U', 'forwarder' ]);
like($err, qr/invalid usage submission/, 'forwarder: a count of 0 is refused');

# $n verifies of the named key on "async", whose batch the primary applies
# but whose answer is lost: the primary's COMMIT of it waits for a
# synchronous standby that never comes, and the forwarder's session is
# ended there.  $before_end, if given, runs on the primary just before.
sub lose_answer
{
	my ($name, $n, $ip, $before_end) = @_;
	$primary->append_conf('postgresql.conf', "synchronous_standby_names = 'nobody'");
	$primary->reload;
	verify_many($async, $name, $n, $ip);
	ok($primary->poll_query_until('postgres', q{
		SELECT count(*) = 1 FROM pg_stat_activity
		 WHERE application_name = 'flowella usage forwarder' AND wait_event = 'SyncRep'}),
		'primary: a batch from async waits for a synchronous standby');
	$before_end->() if $before_end;
	is($primary->safe_psql('postgres', q{
		SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		 WHERE application_name = 'flowella usage forwarder' AND wait_event = 'SyncRep'}),
		't', 'primary: its session ended before the answer went back');
	# the ended session's commit becomes visible once its backend has exited
	ok($primary->poll_query_until('postgres', sprintf($sum_of, $name), $n),
		"primary: the batch had committed ($n requests)");
	$primary->append_conf('postgresql.conf', "synchronous_standby_names = 'sync'");
	$primary->reload;
}

# A batch whose answer is lost.  The batch has committed on the primary;
# "async" does not know it and sends it again, which the primary
# recognises: counted once.
lose_answer('lost', 9, '192.0.2.9');
ok($async->poll_query_until('postgres', q{
	SELECT requests_pending = 0 FROM flowella.usage_stats()}),
	'async: the batch is settled once sent again');
is($primary->safe_psql('postgres', sprintf($sum_of, 'lost')), '9',
	'primary: sent twice, counted once');
ok($async->log_contains('flowella usage: lost the connection to the primary|terminating connection'),
	'async: the lost answer is logged');

# 5. The primary stopped: both standbys keep answering, from what they
# replayed.
$primary->stop;
for my $node (@standbys)
{
	ok($node->poll_query_until('postgres', q{
		SELECT NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')}),
		$node->name . ': no longer streams from the primary');
	is(code_on($node, 'live'), 'VALID', $node->name . ': VALID with the primary stopped');
	is(code_on($node, 'revoked'), 'REVOKED', $node->name . ': REVOKED with the primary stopped');
	is(code_on($node, 'live', 'messages:send', '198.51.100.7'), 'VALID',
		$node->name . ': and with a scope and a client address');
}
# What they count meanwhile stays pending, and reaches the primary once
# it is back: once.
verify_many($sync, 'down', 6, '198.51.100.6');
verify_many($async, 'down', 5, '198.51.100.5');
for my $node (@standbys)
{
	ok($node->poll_query_until('postgres', q{
		SELECT requests_pending > 0 AND requests_written < requests_counted
		  FROM flowella.usage_stats()}),
		$node->name . ': its counts stay pending with the primary stopped');
}
$primary->start;
$primary->wait_for_catchup($sync);
$primary->wait_for_catchup($async);
is(code_on($primary, 'live'), 'VALID', 'primary: back, VALID');
ok($primary->poll_query_until('postgres', sprintf($sum_of, 'down'), '11'),
	'primary back: the 11 requests counted while it was stopped arrive');
for my $node (@standbys)
{
	ok($node->poll_query_until('postgres', q{
		SELECT requests_pending = 0 AND requests_written = requests_counted
		  FROM flowella.usage_stats()}),
		$node->name . ': nothing left pending');
}
is($primary->safe_psql('postgres', sprintf($sum_of, 'down')), '11',
	'primary: each of them once');

# 6. "async" promoted: it verifies like a primary and records usage itself,
# also in a session opened before the promotion (a pooled connection).  The
# verifies before the promotion went to the primary, and came back to
# "async" by replay.
my $pooled = $async->background_psql('postgres');
my $promo_verify = q{
	SELECT string_agg(v.code, ' ' ORDER BY i)
	  FROM generate_series(1, %d) i, tokens t,
		   LATERAL flowella.apikey_verify(CASE WHEN i > 0 THEN t.token END,
										  'messages:send', '192.0.2.14') v
	 WHERE t.name = 'promo'};
is($pooled->query_safe(sprintf($promo_verify, 5)), join(' ', ('VALID') x 5),
	'async: 5 verifies before promotion');
ok($primary->poll_query_until('postgres', sprintf($sum_of, 'promo'), '5'),
	'primary: has the 5 from async');
ok($async->poll_query_until('postgres', q{
	SELECT requests_pending = 0 FROM flowella.usage_stats()}),
	'async: handed over');
$primary->wait_for_catchup($async);

# A batch in flight at the promotion: the primary applied it, but its
# answer never came back (its COMMIT waited for a synchronous standby that
# never comes, and its session was ended there), and the forwarder may no
# longer log in, so "async" cannot send it again.  The promoted server
# finds it applied in the usage_submissions it replayed: the 4 requests
# are counted once, from the replayed rows, and not again from its own.
lose_answer('inflight', 4, '192.0.2.44', sub {
	$primary->safe_psql('postgres', q{
		BEGIN;
		SET LOCAL synchronous_commit = local;
		ALTER ROLE forwarder NOLOGIN;
		COMMIT;});
});
$primary->wait_for_catchup($async);
is($async->safe_psql('postgres', sprintf($sum_of, 'inflight')), '4',
	'async: replayed the applied batch');
ok($async->poll_query_until('postgres', q{
	SELECT requests_pending = 4 FROM flowella.usage_stats()}),
	'async: yet holds its 4 requests, the batch unanswered');

my $counted_before = $async->safe_psql('postgres',
	'SELECT requests_counted FROM flowella.usage_stats()');
$async->promote;
ok($async->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'),
	'async: promoted');
ok($async->poll_query_until('postgres', q{
	SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'flowella usage launcher'}),
	'promoted: the usage launcher runs');
is(code_on($async, 'revoked'), 'REVOKED', 'promoted: REVOKED');
is($pooled->query_safe(sprintf($promo_verify, 7)), join(' ', ('VALID') x 7),
	'promoted: 7 verifies of one key, in the session opened before');
$pooled->quit;
ok($async->poll_query_until('postgres', sprintf($sum_of, 'promo'), '12'),
	'promoted: its api_key_usage has the 5 it forwarded and its own 7');
# (the minutes may differ: the rows are summed over them)
is($async->safe_psql('postgres', q{
	SELECT u.client_ip, u.scope, u.code, sum(u.requests) FROM flowella.api_key_usage u
	  JOIN tokens t USING (key_id) WHERE t.name = 'promo' GROUP BY 1, 2, 3}),
	'192.0.2.14|messages:send|VALID|12',
	'promoted: all with the client address, scope and code');
ok($async->poll_query_until('postgres', q{
	SELECT k.last_used_at IS NOT NULL FROM flowella.api_keys k
	  JOIN tokens t USING (key_id) WHERE t.name = 'promo'}),
	'promoted: last_used_at is written');
ok($async->poll_query_until('postgres', q{
	SELECT requests_pending = 0 AND requests_written = requests_counted
	  FROM flowella.usage_stats()}),
	'promoted: everything counted is written');
is($async->safe_psql('postgres', 'SELECT requests_counted FROM flowella.usage_stats()'),
	$counted_before + 8, 'promoted: counted exactly its own 8 requests since (1 REVOKED, 7 VALID)');
is($primary->safe_psql('postgres', sprintf($sum_of, 'promo')),
	'5', 'the old primary has only what async forwarded before its promotion');
is($async->safe_psql('postgres', sprintf($sum_of, 'inflight')), '4',
	'promoted: the batch in flight at the promotion counted once');

$async->stop;
$sync->stop;
$primary->stop;
done_testing();
