# Crash safety: creates, revokes and verifies run under load, the
# postmaster is killed with SIGKILL and restarted.  Every committed create
# and revoke is there with its audit record, nothing uncommitted is, and a
# revoke committed before the crash stays revoked.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowellaTest;
use IPC::Run;
use Cwd qw(abs_path);
use Time::HiRes qw(usleep);

my $node = preloaded_node('crash', q{
flowella.usage_flush_interval = 1
restart_after_crash = off
});

my $owner = 'e1000000-0000-4000-8000-000000000001';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION flowella_apikey;
	SELECT flowella.plan_set('pro', ARRAY['messages:send'], true);
	SELECT flowella.org_create('Crash Ltd', 'pro', '$owner');
	SELECT flowella.org_create('Open Ltd', 'pro', '$owner');
});
my $org = $node->safe_psql('postgres', "SELECT org_id FROM flowella.orgs WHERE name = 'Crash Ltd'");
# The keys acknowledged before the crash and the transaction left open at
# it are in another org than the load: an open transaction that changed
# keys of an org holds that org's audit chain until it ends (1.5), so the
# load's changes in the same org would wait for it.
my $open_org = $node->safe_psql('postgres', "SELECT org_id FROM flowella.orgs WHERE name = 'Open Ltd'");

sub create_key
{
	my ($label) = @_;
	my $out = $node->safe_psql('postgres', qq{
		BEGIN;
		SELECT flowella.set_actor('$owner');
		SELECT key_id || ' ' || token FROM flowella.apikey_create('$open_org', '$label');
		COMMIT;
	});
	return split / /, (grep { /flwl_/ } split /\n/, $out)[0];
}

# acknowledged before the crash: two keys, one of them revoked
my ($kept_id, $kept_token) = create_key('kept');
my ($gone_id, $gone_token) = create_key('revoked before crash');
$node->safe_psql('postgres', qq{
	BEGIN;
	SELECT flowella.set_actor('$owner');
	SELECT flowella.apikey_revoke('$gone_id');
	COMMIT;
});

# load: every transaction creates a key and revokes every other one, and
# verifies the kept token; it runs until the crash ends it (-T is only a
# bound), however long a slow machine takes to create the keys awaited below
my $script = "$PostgreSQL::Test::Utils::tmp_check/load.sql";
PostgreSQL::Test::Utils::append_to_file($script, qq{
BEGIN;
SELECT flowella.set_actor('$owner');
SELECT flowella.apikey_revoke(k.key_id) FROM flowella.apikey_create('$org', 'load') k
 WHERE random() < 0.5;
COMMIT;
SELECT code FROM flowella.apikey_verify('$kept_token');
});
my ($lout, $lerr) = ('', '');
my $load = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '4', '-j', '2', '-T', '600', '-f', $script,
	  '-h', $node->host, '-p', $node->port, 'postgres' ],
	'>', \$lout, '2>', \$lerr);

# uncommitted at the crash: a new key and a revoke of the kept key.  By now
# the load may have made the org pass the threshold of its "organisation
# now has N active API keys" NOTICE, and a BackgroundPsql fails a query
# that writes anything to stderr: this session shows warnings and errors.
my $open = $node->background_psql('postgres');
$open->query_safe("SET client_min_messages = warning");
$open->query_safe("BEGIN");
$open->query_safe("SELECT flowella.set_actor('$owner')");
my $pending_id = $open->query_safe(
	"SELECT key_id FROM flowella.apikey_create('$open_org', 'uncommitted')");
$open->query_safe("SELECT flowella.apikey_revoke('$kept_id')");

$node->poll_query_until('postgres',
	"SELECT count(*) >= 50 FROM flowella.api_keys WHERE label = 'load'")
  or die 'the load did not run';

my $pm_pid = $node->{_pid};
$node->kill9;
$load->finish;
$open->{run}->kill_kill;

# The killed postmaster may linger as a zombie where PID 1 does not reap
# orphans (containers); its children exit on their own, each when it next
# notices that the postmaster is gone (a busy one can take a while on a
# loaded machine).  The restart must wait for all of them: one still
# attached to the old shared memory makes it fail.  They are the processes
# whose working directory is the data directory (a zombie has none).  Once
# none is left, the stale lock files naming the zombie would block the
# restart.
sub zombie_or_gone
{
	my $stat = "/proc/$pm_pid/stat";
	return 1 unless -e $stat;
	return slurp_file($stat) =~ /^\d+ \(.*\) Z /;
}
my $datadir = $node->data_dir;
my $datadir_real = abs_path($datadir);
sub server_processes
{
	return grep { (readlink("/proc/$_/cwd") // '') eq $datadir_real }
	  map { m{^/proc/(\d+)$} ? $1 : () } glob('/proc/[0-9]*');
}
my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
usleep(100_000) until (zombie_or_gone() && !server_processes()) || time() > $deadline;
ok(zombie_or_gone(), 'the postmaster is dead');
is(join(' ', server_processes()), '', 'and no server process is left');
if (-e "/proc/$pm_pid")
{
	my $sock = $node->host . '/.s.PGSQL.' . $node->port;
	unlink("$datadir/postmaster.pid", "$sock.lock", $sock);
}
$node->start;

my $q = sub { $node->safe_psql('postgres', shift) };

cmp_ok($q->("SELECT count(*) FROM flowella.api_keys WHERE label = 'load'"), '>=', 50,
	'keys created under load survived');
is($q->(q{
	SELECT count(*) FROM flowella.api_keys k
	 WHERE NOT EXISTS (SELECT 1 FROM flowella.audit_records a
					    WHERE a.key_id = k.key_id AND a.action = 'key.created')}),
	'0', 'every key has its key.created record');
is($q->(q{
	SELECT count(*) FROM flowella.api_keys k
	 WHERE (k.revoked_at IS NOT NULL) <>
		   EXISTS (SELECT 1 FROM flowella.audit_records a
				    WHERE a.key_id = k.key_id AND a.action = 'key.revoked')}),
	'0', 'a key is revoked exactly when it has a key.revoked record');
is($q->(q{
	SELECT count(*) FROM (SELECT key_id FROM flowella.audit_records
						   WHERE action = 'key.revoked' GROUP BY key_id HAVING count(*) > 1) d}),
	'0', 'no key has two key.revoked records');
is($q->("SELECT count(*) FROM flowella.api_keys WHERE key_id = '$pending_id'"),
	'0', 'the uncommitted key is not there');
is($q->("SELECT count(*) FROM flowella.audit_records WHERE key_id = '$pending_id'"),
	'0', 'nor its audit record');
is($q->("SELECT code FROM flowella.apikey_verify('$kept_token')"), 'VALID',
	'the uncommitted revoke did not happen');
is($q->("SELECT code FROM flowella.apikey_verify('$gone_token')"), 'REVOKED',
	'the revoke committed before the crash holds');
is($q->(q{SELECT count(*) FROM (SELECT event_id FROM flowella.audit_records
								GROUP BY event_id HAVING count(*) > 1) d}),
	'0', 'audit event ids are unique');
is($q->(q{SELECT string_agg(o.name || ' ' || v.ok, ', ' ORDER BY o.name)
			FROM flowella.orgs o, flowella.audit_verify(o.org_id) v}),
	'Crash Ltd true, Open Ltd true', "both orgs' audit chains verify after the crash");

# the usage worker came back with the server: a use after the restart is
# written (the load's uses of the kept key may have been before the crash)
my $used_before = $q->(
	"SELECT coalesce(last_used_at, '-infinity') FROM flowella.api_keys WHERE key_id = '$kept_id'");
$q->("SELECT flowella.apikey_verify('$kept_token')");
ok($node->poll_query_until('postgres',
		"SELECT last_used_at > '$used_before' FROM flowella.api_keys WHERE key_id = '$kept_id'"),
	'last-used tracking works after the restart');

$node->stop;
done_testing();
