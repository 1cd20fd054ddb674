# apikey_verify under a stream of plan cache invalidations: whatever verify
# detoasts (the key's scopes, the required scope) may accept invalidation
# messages, which reset the backend's plan cache.  Verifiers run against a
# plan of 3 000 long scopes while admin sessions keep changing an unrelated
# plan, so every verify races a cache reset.  Every answer must be right and
# no backend may crash.
#
# Scenario 1: a key that holds all 3 000 scopes explicitly (stored out of
# line), verified for a scope it holds and one it does not.
# Scenario 2: a key that inherits its plan, verified by the verifier role
# with a required scope of 100 000 bytes read from a column stored out of
# line, so that it reaches apikey_verify as a TOAST pointer.
#
# Each scenario runs for FLOWELLA_STRESS_SECONDS (default 30) seconds; the
# test asserts the absence of a crash and of a wrong answer, never a number
# of verifies, which depends on the machine.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowellaTest;

my $duration = $ENV{FLOWELLA_STRESS_SECONDS} // 30;
my $nscopes = 3000;

# statements are not logged: the log would grow by the thousand a second
my $node = preloaded_node('verify_cache', "log_statement = none\n");

# scope i of plan big: 60 characters of md5 digits, which compress poorly
my $scope_sql = q{'scope:' || substr(md5(%s::text) || md5((-%s)::text), 1, 54)};
my $scope_g = sprintf($scope_sql, 'g', 'g');
my $owner = 'f1000000-0000-4000-8000-000000000001';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION flowella_apikey;
	CREATE ROLE regress_verifier LOGIN IN ROLE flowella_apikey_verifier;
	SELECT flowella.plan_set('big',
		ARRAY(SELECT $scope_g FROM generate_series(1, $nscopes) g ORDER BY g), true);
	SELECT flowella.plan_set('other', ARRAY['messages:send'], true);
	SELECT flowella.org_create('Big Ltd', 'big', '$owner');

	CREATE TABLE tokens (name text PRIMARY KEY, token text NOT NULL);
	BEGIN;
	SELECT flowella.set_actor('$owner');
	INSERT INTO tokens
	SELECT 'explicit', token
	  FROM flowella.apikey_create((SELECT org_id FROM flowella.orgs), 'all scopes',
		   (SELECT scopes FROM flowella.plans WHERE plan = 'big'));
	INSERT INTO tokens
	SELECT 'inherit', token
	  FROM flowella.apikey_create((SELECT org_id FROM flowella.orgs), 'inherits');
	COMMIT;

	-- the required scope of scenario 2, stored out of line, uncompressed
	CREATE TABLE requests (scope text);
	ALTER TABLE requests ALTER scope SET STORAGE EXTERNAL;
	INSERT INTO requests VALUES (repeat('x', 100000));

	-- an answer other than the expected one stops the pgbench client
	CREATE FUNCTION check_answer(got text, want text) RETURNS void
	LANGUAGE plpgsql AS \$\$
	BEGIN
		IF got IS DISTINCT FROM want THEN
			RAISE EXCEPTION 'verify answered %, expected %', got, want;
		END IF;
	END \$\$;
	GRANT SELECT ON tokens, requests TO regress_verifier;
});

# The premise of both scenarios: the values verify detoasts are out of line.
my $toasted = $node->safe_psql('postgres', q{
	SELECT pg_column_size(k.scopes) > 8192,
		   (SELECT pg_column_size(scope) FROM requests) >= 100000,
		   (SELECT count(*) FROM pg_class c, pg_class t
			 WHERE c.oid IN ('flowella.api_keys'::regclass, 'requests'::regclass)
			   AND t.oid = c.reltoastrelid AND pg_relation_size(t.oid) > 0)
	  FROM flowella.api_keys k WHERE k.label = 'all scopes'});
is($toasted, 't|t|2', 'the key scopes and the required scope are stored out of line');

my $start_time = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
my $tmp = PostgreSQL::Test::Utils::tempdir;

# pgbench with one script, started in the background
sub start_pgbench
{
	my ($name, $clients, $user, $script) = @_;
	my $file = "$tmp/$name.sql";
	PostgreSQL::Test::Utils::append_to_file($file, $script);
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[
			'pgbench', '-n', '-c', $clients, '-j', 1, '-T', $duration,
			'-h', $node->host, '-p', $node->port, '-U', $user,
			'-f', $file, 'postgres'
		],
		'>', \$out, '2>', \$err);
	return { name => $name, h => $h, out => \$out, err => \$err };
}

sub finish_pgbench
{
	my ($run) = @_;
	$run->{h}->finish;
	my $status = $run->{h}->result(0);
	my ($done) = ${ $run->{out} } =~ /actually processed: (\d+)/;
	note("$run->{name}: " . ($done // 'no') . ' transactions');
	is($status, 0, "$run->{name}: every client ran to the end")
	  or diag(${ $run->{err} });
	unlike(${ $run->{err} }, qr/ERROR|FATAL|server closed|terminated/,
		"$run->{name}: no error");
}

# plan_set on an unrelated plan: each commit resets every backend's cache
my $admin_script = q{
\set n random(1, 1000000000)
SELECT flowella.plan_set('other', ARRAY['messages:send', 'messages:' || :n], true);
};

sub scenario
{
	my ($name, $user, $script) = @_;
	my $log_offset = -s $node->logfile;
	my @runs = (
		start_pgbench("$name verifiers", 4, $user, $script),
		start_pgbench("$name admins", 2, $node->safe_psql('postgres', 'SELECT current_user'),
			$admin_script));
	finish_pgbench($_) for @runs;
	ok( !$node->log_contains(
			qr/terminated by signal|was terminated by|all server processes terminated/,
			$log_offset),
		"$name: no backend crashed");
	is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'),
		$start_time, "$name: the server did not restart");
}

my $held = sprintf($scope_sql, ':i', ':i');
scenario('explicit scopes', $node->safe_psql('postgres', 'SELECT current_user'), qq{
\\set i random(1, $nscopes)
SELECT check_answer((SELECT v.code || ' ' || cardinality(v.scopes)
	FROM tokens t, flowella.apikey_verify(t.token, $held) v
	WHERE t.name = 'explicit'), 'VALID $nscopes');
SELECT check_answer((SELECT v.code || ' ' || cardinality(v.scopes)
	FROM tokens t, flowella.apikey_verify(t.token, 'messages:send') v
	WHERE t.name = 'explicit'), 'INSUFFICIENT_SCOPE $nscopes');
});

scenario('out-of-line required scope', 'regress_verifier', qq{
\\set i random(1, $nscopes)
SELECT check_answer((SELECT v.code || ' ' || cardinality(v.scopes)
	FROM tokens t, requests r, flowella.apikey_verify(t.token, r.scope) v
	WHERE t.name = 'inherit'), 'INSUFFICIENT_SCOPE $nscopes');
SELECT check_answer((SELECT v.code || ' ' || cardinality(v.scopes)
	FROM tokens t, flowella.apikey_verify(t.token, $held) v
	WHERE t.name = 'inherit'), 'VALID $nscopes');
});

$node->stop;
done_testing();
