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

$node->stop;
my $log = slurp_file($node->logfile);

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
