# Last-used tracking under faults: a flush that fails (here, a trigger that
# refuses the update) is logged and retried a bounded number of times, then
# the use is given up; uses pending when the extension is dropped are
# forgotten instead of failing every interval.  Nothing stays pending
# forever, and nothing is written that should not be.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowellaTest;
use List::Util;

my $node = preloaded_node('usage_faults', q{
flowella.usage_flush_interval = 1
});

my $owner = 'f1000000-0000-4000-8000-000000000001';
sub make_key
{
	my ($db) = @_;
	$node->safe_psql($db, qq{
		SELECT flowella.plan_set('pro', ARRAY['messages:send'], true);
		SELECT flowella.org_create('Faults Ltd', 'pro', '$owner')
		 WHERE NOT EXISTS (SELECT 1 FROM flowella.orgs);
	});
	my $out = $node->safe_psql($db, qq{
		BEGIN;
		SELECT flowella.set_actor('$owner');
		SELECT token FROM flowella.apikey_create((SELECT org_id FROM flowella.orgs), 'k');
		COMMIT;
	});
	return (grep { /^flwl_/ } split /\n/, $out)[0];
}

sub count_in_log
{
	my ($pattern, $from) = @_;
	my $log = substr(slurp_file($node->logfile), $from);
	my @hits = $log =~ /$pattern/g;
	return scalar @hits;
}

$node->safe_psql('postgres', 'CREATE EXTENSION flowella_apikey');
my $token = make_key('postgres');

# Fault 1: every flush of this key fails.
$node->safe_psql('postgres', q{
	CREATE FUNCTION refuse_flush() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		RAISE EXCEPTION 'flush fault injected';
	END $$;
	CREATE TRIGGER refuse_flush BEFORE UPDATE OF last_used_at ON flowella.api_keys
		FOR EACH ROW EXECUTE FUNCTION refuse_flush();
});
my $log_start = -s $node->logfile;
is($node->safe_psql('postgres', "SELECT code FROM flowella.apikey_verify('$token')"),
	'VALID', 'verify answers while flushes fail');
ok($node->poll_query_until('postgres',
		'SELECT pending = 0 FROM flowella.usage_stats()'),
	'a use whose flush keeps failing is given up, not kept forever');
my $failures = count_in_log(qr/flush fault injected/, $log_start);
cmp_ok($failures, '>=', 1, "the failing flush was logged ($failures times)");
cmp_ok($failures, '<=', 6, 'and retried a bounded number of times');
is($node->safe_psql('postgres', 'SELECT count(*) FROM flowella.api_keys WHERE last_used_at IS NOT NULL'),
	'0', 'nothing was written');
is($node->safe_psql('postgres', 'SELECT code FROM flowella.apikey_verify(\'' . $token . '\')'),
	'VALID', 'verify still answers');
$node->safe_psql('postgres', 'DROP TRIGGER refuse_flush ON flowella.api_keys; DROP FUNCTION refuse_flush()');
# a use made now: the one above may have been given up already
$node->safe_psql('postgres', "SELECT flowella.apikey_verify('$token')");
ok($node->poll_query_until('postgres',
		'SELECT count(*) = 1 FROM flowella.api_keys WHERE last_used_at IS NOT NULL'),
	'once the fault is gone, the next use is written');

# Fault 2: uses pending when the extension is dropped.  Flush rounds are
# seen in another database, "observer": a use of its key made once the
# previous one is written is written by a later round.
$node->safe_psql('postgres', 'CREATE DATABASE observer');
$node->safe_psql('observer', 'CREATE EXTENSION flowella_apikey');
my $observer_token = make_key('observer');
$log_start = -s $node->logfile;
$node->safe_psql('postgres', qq{
	BEGIN;
	SELECT flowella.apikey_verify('$token');
	DROP EXTENSION flowella_apikey;
	COMMIT;
});
# Four flush rounds with the extension gone (its schema stays behind).
# Once the first has ended (the second has written a use), only the
# observer's use just made may be pending.
my @pending;
for my $round (1 .. 4)
{
	my $last = $node->safe_psql('observer',
		'SELECT coalesce(max(last_used_at), \'-infinity\') FROM flowella.api_keys');
	push @pending, $node->safe_psql('observer', qq{
		SELECT s.pending FROM flowella.apikey_verify('$observer_token') v,
			LATERAL (SELECT pending FROM flowella.usage_stats() WHERE v.valid) s});
	$node->poll_query_until('observer',
		"SELECT max(last_used_at) > '$last' FROM flowella.api_keys")
	  or die "flush round $round was not seen";
}
my $missing = count_in_log(qr/relation "flowella\.api_keys" does not exist/, $log_start);
cmp_ok($missing, '<=', 1, "a dropped extension's uses are not retried every round ($missing errors)");
cmp_ok(List::Util::max(@pending[2, 3]), '<=', 1,
	"nothing of the dropped extension is pending after its first round (pending: @pending)");

$node->stop;
done_testing();
