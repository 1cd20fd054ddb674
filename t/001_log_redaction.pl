# Log redaction (SPEC section 3): with every statement and duration logged,
# bind parameters logged, and errors logged with their statement, no token
# reaches the server log; its prefix does, followed by [REDACTED].
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowellaTest;

my $node = preloaded_node('redaction', q{
log_statement = 'all'
log_min_duration_statement = 0
log_min_error_statement = error
log_parameter_max_length = -1
log_parameter_max_length_on_error = -1
log_error_verbosity = verbose
});

my $owner = 'b1000000-0000-4000-8000-000000000001';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION flowella_apikey;
	SELECT flowella.plan_set('pro', ARRAY['messages:send'], true);
	SELECT flowella.org_create('Redact Ltd', 'pro', '$owner');
});
my $token = $node->safe_psql('postgres', qq{
	BEGIN;
	SELECT flowella.set_actor('$owner');
	SELECT token FROM flowella.apikey_create(
		(SELECT org_id FROM flowella.orgs), 'log test');
	COMMIT;
});
($token) = grep { /^flwl_/ } split /\n/, $token;
like($token, qr/^flwl_live_[0-9A-Za-z]{46}$/, 'a token was created');
my $prefix = substr($token, 0, 18);
my $secret = substr($token, 18);
my $redacted = quotemeta($prefix) . '\[REDACTED\]';

# 1. a statement carrying the token (log_statement and duration lines)
is($node->safe_psql('postgres',
		"SELECT code FROM flowella.apikey_verify('$token')"),
	'VALID', 'the token verifies');

# 1b. the same with only log_min_duration_statement logging it
$node->safe_psql('postgres',
	"SET log_statement = 'none'; SELECT code FROM flowella.apikey_verify('$token', 'messages:send')");

# 2. an error raised from a statement that contains the token
my ($ret, $stdout, $stderr) = $node->psql('postgres', "SELECT '$token'::int");
isnt($ret, 0, 'the bad cast fails');
unlike($stderr, qr/\Q$secret\E/, 'the client error does not echo the token');
like($stderr, qr/$redacted/, 'the client error shows the prefix');

# 3. the token in a message text and its detail
($ret, $stdout, $stderr) = $node->psql('postgres',
	"DO \$\$BEGIN RAISE WARNING 'seen %', '$token' USING DETAIL = 'again $token'; END\$\$");
unlike($stderr, qr/\Q$secret\E/, 'a WARNING does not echo the token');

# 4. bind parameters of the extended protocol, on success and on error
my $script = "$PostgreSQL::Test::Utils::tmp_check/bind.sql";
PostgreSQL::Test::Utils::append_to_file($script,
	"SELECT code FROM flowella.apikey_verify(:tok);\n");
$node->command_ok(
	[ 'pgbench', '-n', '-t', '1', '-M', 'extended', '-D', "tok=$token", '-f', $script, 'postgres' ],
	'verify with the token as a bind parameter');
my $bad = "$PostgreSQL::Test::Utils::tmp_check/bad.sql";
PostgreSQL::Test::Utils::append_to_file($bad, "SELECT (:tok)::int;\n");
$node->command_fails(
	[ 'pgbench', '-n', '-t', '1', '-M', 'extended', '-D', "tok=$token", '-f', $bad, 'postgres' ],
	'a failing statement with the token as a bind parameter');

# 5. client texts that the server does not log: an error with log_min_messages
# above ERROR, and NOTICE and INFO texts (below log_min_messages)
($ret, $stdout, $stderr) = $node->psql('postgres', qq{
	SET log_min_messages = fatal;
	DO \$\$BEGIN RAISE EXCEPTION 'unlogged %', '$token'
		USING DETAIL = 'detail $token', HINT = 'hint $token'; END\$\$});
isnt($ret, 0, 'the unlogged error is raised');
unlike($stderr, qr/\Q$secret\E/, 'an unlogged client error does not echo the token');
is(() = $stderr =~ /$redacted/g, 3, 'its message, detail and hint show the prefix');
($ret, $stdout, $stderr) = $node->psql('postgres',
	"DO \$\$BEGIN RAISE NOTICE 'notice %', '$token'; RAISE INFO 'info %', '$token'; END\$\$");
unlike($stderr, qr/\Q$secret\E/, 'NOTICE and INFO texts do not echo the token');
like($stderr, qr/NOTICE:  notice $redacted.*INFO:  info $redacted/s,
	'NOTICE and INFO texts show the prefix');

# 6. a direct write that breaks a NOT NULL or UNIQUE constraint of api_keys
# does not print the row (or the conflicting secret_hash), logged or not
my $hash = $node->safe_psql('postgres',
	"SELECT encode(secret_hash, 'hex') FROM flowella.api_keys");
like($hash, qr/^[0-9a-f]{64}$/, 'the key hash in hex');
my %bad_rows = (
	'NOT NULL' => "NULL, prefix",
	'UNIQUE (secret_hash)' => "label, 'flwl_live_Unique01'");
for my $constraint (sort keys %bad_rows)
{
	for my $logged (0, 1)
	{
		($ret, $stdout, $stderr) = $node->psql('postgres',
			($logged ? '' : 'SET log_min_messages = fatal; ') . qq{
			INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
			SELECT org_id, $bad_rows{$constraint}, secret_hash, mode, created_by
			  FROM flowella.api_keys});
		my $how = $logged ? 'logged' : 'unlogged';
		like($stderr, qr/ERROR:  .*constraint.*\nDETAIL:  The values of the row are not shown\./,
			"$constraint violation ($how): the detail hides the row");
		unlike($stderr, qr/$hash/i, "$constraint violation ($how): no hash in the client text");
	}
}

# 7. pg_stat_activity shows the statement of a session redacted, while it
# runs (here: waiting for an advisory lock another session holds) and once
# it is idle
my $holder = $node->background_psql('postgres');
$holder->query_safe('SELECT pg_advisory_lock(4242)');
my $session = $node->background_psql('postgres');
my $pid = $session->query_safe('SELECT pg_backend_pid()');
$session->query_until(qr/started/, qq{\\echo started
SELECT code FROM flowella.apikey_verify('$token') WHERE pg_advisory_lock(4242) IS NOT NULL;
});
$node->poll_query_until('postgres',
	"SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $pid")
  or die 'the session did not wait for the lock';
my $activity_sql = "SELECT query FROM pg_stat_activity WHERE pid = $pid";
my $running = $node->safe_psql('postgres', $activity_sql);
like($running, qr/^SELECT code FROM flowella\.apikey_verify\('$redacted'\) WHERE/,
	'pg_stat_activity shows a running statement redacted');
$holder->query_safe('SELECT pg_advisory_unlock(4242)');
$node->poll_query_until('postgres',
	"SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $pid")
  or die 'the session did not finish';
my $idle = $node->safe_psql('postgres', $activity_sql);
like($idle, qr/^SELECT code FROM flowella\.apikey_verify\('$redacted'\) WHERE/,
	'pg_stat_activity shows an idle session\'s last statement redacted');
unlike($running . $idle, qr/\Q$secret\E/, 'pg_stat_activity never shows the token');
$session->quit;
$holder->quit;

$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/$hash/i, 'no key hash anywhere in the server log');

unlike($log, qr/\Q$secret\E/, 'no token secret anywhere in the server log');
like($log, qr/statement: SELECT code FROM flowella\.apikey_verify\('$redacted'\)/,
	'log_statement line keeps the prefix');
like($log, qr/duration: [0-9.]+ ms  statement: SELECT code FROM flowella\.apikey_verify\('$redacted', 'messages:send'\)/,
	'log_min_duration_statement line keeps the prefix');
like($log, qr/STATEMENT:  SELECT '$redacted'::int/, 'STATEMENT of an error is redacted');
like($log, qr/invalid input syntax for type integer: "$redacted"/, 'error message is redacted');
like($log, qr/WARNING:  01000: seen $redacted/, 'message text is redacted');
like($log, qr/DETAIL:  again $redacted/, 'detail is redacted');
like($log, qr/parameters: \$1 = '$redacted'/, 'bind parameters are redacted');

done_testing();
