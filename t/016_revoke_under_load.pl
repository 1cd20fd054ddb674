# Revocation stays immediate with the verify key cache, under load: four
# verifier sessions keep verifying 200 keys (so each holds them in its key
# cache) while a manager revokes them one at a time.  Each verifier notes,
# for every verify, the time it started and the answer; the manager notes,
# for every revoke, the time its COMMIT had returned.  No verify that
# started after a revoke's COMMIT returned may answer VALID for that key
# (SPEC section 7: "the next verify in any session answers REVOKED").
#
# Verifiers run until the manager is done (a flag they poll), and the test
# asserts what was answered, never how many verifies were made: that
# depends on the machine.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowellaTest;

my $nkeys = 200;
my $owner = 'f1600000-0000-4000-8000-000000000001';
my $node = preloaded_node('revoke_load', "log_statement = none\n");
$node->safe_psql('postgres', qq{
	CREATE EXTENSION flowella_apikey;
	SELECT flowella.plan_set('pro', ARRAY['messages:send'], false);
	SELECT flowella.org_create('Load Ltd', 'pro', '$owner');
	CREATE TABLE tokens (i int PRIMARY KEY, key_id uuid NOT NULL, token text NOT NULL);
	BEGIN;
	SELECT flowella.set_actor('$owner');
	INSERT INTO tokens
	SELECT g, c.key_id, c.token
	  FROM generate_series(1, $nkeys) g,
		   LATERAL flowella.apikey_create((SELECT org_id FROM flowella.orgs), 'key ' || g) c;
	COMMIT;
	-- answers, and the time each revoke's COMMIT had returned
	CREATE UNLOGGED TABLE answers (session int, i int, started timestamptz, code text);
	CREATE UNLOGGED TABLE revoked (i int PRIMARY KEY, returned timestamptz);
	CREATE TABLE done (flag boolean);
	CREATE TABLE ready (session int);
});

# A verifier: verifies a random key, noting when each call started, until
# the flag is set; answers are kept in memory and written at the end.
# After its first 200 verifies it says it is ready (and commits that);
# the rest runs in one transaction, on purpose: verify reads the latest
# committed state and takes invalidations at every call, whatever the
# transaction's age.
my $verifier_sql = qq{
DO \$\$
DECLARE
	n int := 0;
	k int;
	t timestamptz;
	c text;
	s int := pg_backend_pid();
	ks int[] := '{}';
	ts timestamptz[] := '{}';
	cs text[] := '{}';
BEGIN
	LOOP
		n := n + 1;
		IF n = 200 THEN
			INSERT INTO ready VALUES (s);
			COMMIT;
		END IF;
		IF n % 50 = 0 AND EXISTS (SELECT FROM done) THEN
			EXIT;
		END IF;
		k := 1 + floor(random() * $nkeys)::int;
		t := clock_timestamp();
		SELECT v.code INTO c
		  FROM tokens, flowella.apikey_verify(tokens.token, 'messages:send') v
		 WHERE tokens.i = k;
		ks := ks || k;
		ts := ts || t;
		cs := cs || c;
	END LOOP;
	INSERT INTO answers SELECT s, u.k, u.t, u.c FROM unnest(ks, ts, cs) AS u(k, t, c);
END
\$\$;
};

my @verifiers;
for my $v (1 .. 4)
{
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[
			'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', $node->host,
			'-p', $node->port, '-d', 'postgres', '-c', $verifier_sql
		],
		'>', \$out, '2>', \$err);
	push @verifiers, { h => $h, err => \$err };
}

# Wait until each verifier has made its first 200 verifies (so its cache
# holds keys), then revoke every key, noting when each COMMIT had
# returned.
ok($node->poll_query_until('postgres', 'SELECT count(*) = 4 FROM ready'),
	'four verifier sessions are running');
my $manager = $node->background_psql('postgres');
for my $i (1 .. $nkeys)
{
	$manager->query_safe(qq{
		BEGIN;
		SELECT flowella.set_actor('$owner');
		SELECT flowella.apikey_revoke(key_id) FROM tokens WHERE i = $i;
		COMMIT;});
	$manager->query_safe("INSERT INTO revoked VALUES ($i, clock_timestamp())");
}
$manager->query_safe('INSERT INTO done VALUES (true)');
$manager->quit;

for my $v (@verifiers)
{
	$v->{h}->finish;
	is($v->{h}->result(0), 0, 'a verifier ran to the end') or diag(${ $v->{err} });
}

note('answers: ' . $node->safe_psql('postgres', q{
	SELECT string_agg(code || ' ' || n, ', ') FROM (SELECT code, count(*) n FROM answers GROUP BY code) s}));
is($node->safe_psql('postgres', 'SELECT count(DISTINCT session) FROM answers'), '4',
	'every verifier wrote its answers');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM answers WHERE code NOT IN ('VALID', 'REVOKED')}),
	'0', 'every answer is VALID or REVOKED');
# the premise: verifies ran before, around and after the revokes, so keys
# were cached before they were revoked
is($node->safe_psql('postgres', q{
	SELECT count(*) > 0 FROM answers a JOIN revoked r USING (i)
	 WHERE a.code = 'VALID' AND a.started < r.returned}),
	't', 'keys were verified VALID before their revoke');
is($node->safe_psql('postgres', q{
	SELECT count(*) > 0 FROM answers a JOIN revoked r USING (i)
	 WHERE a.code = 'REVOKED' AND a.started > r.returned}),
	't', 'and REVOKED after it');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM answers a JOIN revoked r USING (i)
	 WHERE a.code = 'VALID' AND a.started > r.returned}),
	'0', 'no verify that started after a revoke had committed answered VALID');
done_testing();
