# The audit hash chain (SPEC section 14) where one server and one session
# are not enough to show it:
# - four sessions changing keys of one organisation at once (and a fifth
#   in another organisation) for a fixed number of rounds leave every
#   organisation's chain linear: each record chains from the one with the
#   next lower event_id of its org (recomputed with pgcrypto alone), no two
#   records share a predecessor, and audit_verify passes;
# - pg_dump -> pg_restore keeps every hash as it was (nothing recomputes
#   them), the restored chains verify, and the next change chains on;
# - ALTER EXTENSION UPDATE from 1.4 hashes the records of several
#   organisations, interleaved, each chain in its own event_id order, and
#   leaves every other column of every record as it was.
use strict;
use warnings;
use File::Basename qw(dirname);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowellaTest;

my $node = preloaded_node('chain');

sub last_line
{
	my ($out) = @_;
	return (split /\n/, $out)[-1];
}

my $owner_a = 'f1000000-0000-4000-8000-00000000000a';
my $admin_a = 'f1000000-0000-4000-8000-0000000000a2';
my $owner_b = 'f1000000-0000-4000-8000-00000000000b';

# The recompute an auditor runs with pgcrypto alone (the README's): for
# each record, SHA-256 of the previous record's stored hash in its org (32
# zero bytes for the first) and its canonical text.  Answers
# "records mismatches" over every org.
my $recompute_sql = q{
	SELECT count(*) || ' ' || count(*) FILTER (WHERE recomputed IS DISTINCT FROM record_hash)
	  FROM (SELECT record_hash,
				   digest(coalesce(lag(record_hash) OVER (PARTITION BY org_id ORDER BY event_id),
								   decode(repeat('00', 32), 'hex'))
						  || convert_to(jsonb_build_object(
								 'event_id', event_id, 'org_id', org_id, 'key_id', key_id,
								 'action', action, 'actor_user_id', actor_user_id,
								 'actor_ip', actor_ip::text, 'trace_context', trace_context,
								 'occurred_at', to_char(occurred_at AT TIME ZONE 'UTC',
														'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
								 'details', details)::text, 'UTF8'),
						  'sha256') AS recomputed
			  FROM flowella.audit_records) s};

# audit_verify of every org: "name ok checked=count" lines.
my $verify_sql = q{
	SELECT o.name || ' ' || v.ok || ' ' || (v.checked = (SELECT count(*) FROM flowella.audit_records r
														  WHERE r.org_id = o.org_id))
	  FROM flowella.orgs o, flowella.audit_verify(o.org_id) v ORDER BY o.name};

sub setup_orgs
{
	my ($db, $version) = @_;
	my $v = $version ? " VERSION '$version'" : '';
	$node->safe_psql($db, qq{
		CREATE EXTENSION pgcrypto;
		CREATE EXTENSION flowella_apikey$v;
		SELECT flowella.plan_set('ent', ARRAY['messages:send', 'messages:read'], true);
		SELECT flowella.org_create('Org A', 'ent', '$owner_a');
		SELECT flowella.org_create('Org B', 'ent', '$owner_b');
		BEGIN;
		SELECT flowella.set_actor('$owner_a');
		SELECT flowella.member_set((SELECT org_id FROM flowella.orgs WHERE name = 'Org A'),
								   '$admin_a', 'admin');
		COMMIT;
	});
}

#
# Concurrency: 4 sessions in Org A, 1 in Org B, a fixed number of rounds.
#
setup_orgs('postgres');
my $org_a = $node->safe_psql('postgres', "SELECT org_id FROM flowella.orgs WHERE name = 'Org A'");
my $org_b = $node->safe_psql('postgres', "SELECT org_id FROM flowella.orgs WHERE name = 'Org B'");

my $dir = PostgreSQL::Test::Utils::tempdir;
# Org A: a create, then a scope change of a key of the org (several
# records per transaction, and updates as well as inserts).
open(my $fa, '>', "$dir/org_a.sql") or die;
print $fa qq{
\\set actor random(0, 1)
BEGIN;
SELECT flowella.set_actor(CASE :actor WHEN 0 THEN '$owner_a' ELSE '$admin_a' END::uuid);
SELECT count(*) FROM flowella.apikey_create('$org_a', 'load a');
SELECT flowella.apikey_set_scopes(key_id, ARRAY['messages:read'])
  FROM flowella.api_keys WHERE org_id = '$org_a' AND scopes IS NULL AND revoked_at IS NULL
 ORDER BY created_at DESC LIMIT 1;
COMMIT;
};
close $fa;
open(my $fb, '>', "$dir/org_b.sql") or die;
print $fb qq{
BEGIN;
SELECT flowella.set_actor('$owner_b');
SELECT count(*) FROM flowella.apikey_create('$org_b', 'load b');
COMMIT;
};
close $fb;

my $rounds = 150;
my @pgbench = ('pgbench', '-n', '-h', $node->host, '-p', $node->port, 'postgres');
my $bg_b = IPC::Run::start([ @pgbench, '-c', '1', '-t', $rounds, '-f', "$dir/org_b.sql" ],
	'>', "$dir/b.out", '2>', "$dir/b.err");
$node->command_ok([ @pgbench, '-c', '4', '-j', '4', '-t', $rounds, '-f', "$dir/org_a.sql" ],
	"4 sessions x $rounds rounds of changes in one organisation");
$bg_b->finish;
is($bg_b->result(0), 0, "meanwhile a session in another organisation: $rounds rounds");

is($node->safe_psql('postgres', qq{
		SELECT count(*) FROM flowella.api_keys WHERE org_id = '$org_a' AND label = 'load a'}),
	4 * $rounds, 'every create in Org A committed');
is($node->safe_psql('postgres', qq{
		SELECT count(*) >= 4 * $rounds * 2 FROM flowella.audit_records WHERE org_id = '$org_a'}),
	't', 'Org A has a record per create and per scope change');

# Linear: every record has its own predecessor (the next lower event_id
# of its org), and chains from it.
my ($records, $mismatches) = split / /, $node->safe_psql('postgres', $recompute_sql);
cmp_ok($records, '>', 4 * $rounds * 2, 'records written under load');
is($mismatches, '0', 'pgcrypto: every record chains from the next lower event_id of its org');
is($node->safe_psql('postgres', q{
		SELECT count(*) = count(DISTINCT record_hash) FROM flowella.audit_records}),
	't', 'no two records share a hash (no predecessor is chained twice)');
is($node->safe_psql('postgres', $verify_sql), "Org A true true\nOrg B true true",
	'audit_verify: both chains verify, every record checked');

# The README's plain-SQL recompute, run as it is printed there (the
# auditor's step 4), against a digest of Org A taken now.
my $readme = slurp_file(dirname(__FILE__) . '/../README.md');
my ($readme_sql) = $readme =~ /Or recompute independently.*?```sql\n(.*?)```/s
  or die 'README: the recompute SQL was not found';
$readme_sql =~ s/^ {3}//mg;
my ($d_id, $d_hash) = split /\|/, $node->safe_psql('postgres',
	"SELECT last_event_id, head_hash FROM flowella.audit_digest('$org_a')");
my @vars = ('-v', "org_id=$org_a", '-v', "expected_event_id=$d_id", '-v', "expected_hash=$d_hash");
is(last_line($node->safe_psql('postgres', $readme_sql, extra_params => \@vars)),
	$node->safe_psql('postgres', "SELECT count(*) FROM flowella.audit_records WHERE org_id = '$org_a'")
	  . '|0||t',
	"README's pgcrypto recompute: every record of Org A chains, the digest's record found");
$node->safe_psql('postgres', qq{
	ALTER TABLE flowella.audit_records DISABLE TRIGGER audit_records_guard;
	UPDATE flowella.audit_records SET details = details || '{"x": 1}'
	 WHERE event_id = (SELECT event_id FROM flowella.audit_records WHERE org_id = '$org_a'
						ORDER BY event_id OFFSET 10 LIMIT 1);
});
my $tenth = $node->safe_psql('postgres', qq{
	SELECT event_id FROM flowella.audit_records WHERE org_id = '$org_a' ORDER BY event_id OFFSET 10 LIMIT 1});
my @readme_out = split /\|/, last_line($node->safe_psql('postgres', $readme_sql, extra_params => \@vars));
is("$readme_out[1] $readme_out[2]", "1 $tenth",
	"README's pgcrypto recompute names a record edited with the guard disabled");
is($node->safe_psql('postgres', "SELECT ok || ' ' || first_bad_event_id FROM flowella.audit_verify('$org_a')"),
	"false $tenth", 'audit_verify names it too');
$node->safe_psql('postgres', qq{
	UPDATE flowella.audit_records SET details = details - 'x' WHERE event_id = $tenth;
	ALTER TABLE flowella.audit_records ENABLE ALWAYS TRIGGER audit_records_guard;
});
is($node->safe_psql('postgres', $verify_sql), "Org A true true\nOrg B true true",
	'edited back, both chains verify again');

#
# Dump and restore keep every hash.
#
my $hashes_sql = q{SELECT event_id, org_id, encode(record_hash, 'hex')
					 FROM flowella.audit_records ORDER BY event_id};
my $digests_sql = q{SELECT o.name, d.* FROM flowella.orgs o, flowella.audit_digest(o.org_id) d
					 ORDER BY o.name};
my $hashes = $node->safe_psql('postgres', $hashes_sql);
my $digests = $node->safe_psql('postgres', $digests_sql);
my $dump = "$dir/chain.dump";
$node->command_ok([ 'pg_dump', '-Fc', '-h', $node->host, '-p', $node->port, '-f', $dump, 'postgres' ],
	'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-h', $node->host, '-p', $node->port,
		'-d', 'restored', $dump ], 'pg_restore');
is($node->safe_psql('restored', $hashes_sql), $hashes,
	'restored: every record with its hash as it was');
is($node->safe_psql('restored', $digests_sql), $digests, 'restored: the same digests');
is($node->safe_psql('restored', $verify_sql), "Org A true true\nOrg B true true",
	'restored: both chains verify');
$node->safe_psql('restored', qq{
	BEGIN;
	SELECT flowella.set_actor('$owner_b');
	SELECT count(*) FROM flowella.apikey_create('$org_b', 'after restore');
	COMMIT;
});
is($node->safe_psql('restored', $verify_sql), "Org A true true\nOrg B true true",
	'restored: a change after the restore chains on');

#
# Upgrade from 1.4: records of several orgs, interleaved.
#
$node->safe_psql('postgres', 'CREATE DATABASE at_1_4');
setup_orgs('at_1_4', '1.4');
$node->safe_psql('at_1_4', qq{SELECT flowella.org_create('Org C', 'ent', '$owner_a')});
for my $i (1 .. 5)
{
	for my $org ('Org A', 'Org B', 'Org C')
	{
		my $actor = $org eq 'Org B' ? $owner_b : $owner_a;
		$node->safe_psql('at_1_4', qq{
			BEGIN;
			SELECT flowella.set_actor('$actor', '192.0.2.$i',
				'00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333$i-01');
			SELECT count(*) FROM flowella.apikey_create(
				(SELECT org_id FROM flowella.orgs WHERE name = '$org'), '$org key $i');
			SELECT flowella.apikey_revoke(key_id) FROM flowella.api_keys
			 WHERE label = '$org key ' || ($i - 1);
			COMMIT;
		});
	}
}
my $audit_sql = q{SELECT event_id, org_id, key_id, action, actor_user_id, actor_ip,
						 trace_context, occurred_at, details
					FROM flowella.audit_records ORDER BY event_id};
my $audit_before = $node->safe_psql('at_1_4', $audit_sql);
cmp_ok(scalar(split /\n/, $audit_before), '>=', 30, '1.4: records of three orgs, interleaved');
$node->safe_psql('at_1_4', 'ALTER EXTENSION flowella_apikey UPDATE');
is($node->safe_psql('at_1_4', "SELECT extversion FROM pg_extension WHERE extname = 'flowella_apikey'"),
	'1.5', 'updated to 1.5');
is($node->safe_psql('at_1_4', $audit_sql), $audit_before,
	'updated: every record as it was, but for its new hash');
is($node->safe_psql('at_1_4', $recompute_sql), (scalar(split /\n/, $audit_before)) . ' 0',
	'updated: every record hashed, each org chained in event_id order (pgcrypto)');
is($node->safe_psql('at_1_4', $verify_sql), "Org A true true\nOrg B true true\nOrg C true true",
	'updated: audit_verify passes for every org');
$node->safe_psql('at_1_4', qq{
	BEGIN;
	SELECT flowella.set_actor('$owner_a');
	SELECT count(*) FROM flowella.apikey_create(
		(SELECT org_id FROM flowella.orgs WHERE name = 'Org C'), 'after the update');
	COMMIT;
});
is($node->safe_psql('at_1_4', $verify_sql), "Org A true true\nOrg B true true\nOrg C true true",
	'updated: a change after the update chains on');

$node->stop;
done_testing();
