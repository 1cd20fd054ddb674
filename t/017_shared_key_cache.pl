# The shared key cache (flowella.verify_shared_cache_keys): a key one
# session verified is found there by every session started later, and a
# change is in the answer of every session that starts after its COMMIT (or
# COMMIT PREPARED) returned -- new sessions never receive the invalidation
# messages sent before they started, so nothing here relies on them.
#
# Each check verifies in a new session (psql -c), so that its own key cache
# is empty and the answer comes from the shared cache or the table; the
# prefix index's scan count tells which (pg_stat_get_xact_numscans, this
# transaction's own).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowellaTest;

my $owner = 'f1700000-0000-4000-8000-000000000001';
my $node = preloaded_node('shared_cache', "max_prepared_transactions = 2\n");
$node->safe_psql('postgres', qq{
	CREATE EXTENSION flowella_apikey;
	SELECT flowella.plan_set('pro', ARRAY['messages:send', 'messages:read'], false);
	SELECT flowella.org_create('Shared Ltd', 'pro', '$owner');
	CREATE TABLE tokens (name text PRIMARY KEY, key_id uuid NOT NULL, token text NOT NULL);
	BEGIN;
	SELECT flowella.set_actor('$owner');
	INSERT INTO tokens
	SELECT n, c.key_id, c.token
	  FROM unnest(ARRAY['api', 'ddl', 'prepared']) n,
		   LATERAL flowella.apikey_create((SELECT org_id FROM flowella.orgs), n,
										  ARRAY['messages:send']) c;
	COMMIT;
	GRANT SELECT ON tokens TO flowella_apikey_verifier;
});

# In a new session, as the verifier: the key's code for messages:send and
# how many prefix-index scans the verify took ("VALID/0": from the shared
# cache).
sub verify_new_session
{
	my ($name) = @_;
	return $node->safe_psql('postgres', qq{
		SET ROLE flowella_apikey_verifier;
		SELECT v.code || '/' || pg_stat_get_xact_numscans('flowella.api_keys_prefix_key'::regclass)
		  FROM tokens t, LATERAL flowella.apikey_verify(t.token, 'messages:send') v
		 WHERE t.name = '$name'});
}

sub as_owner
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', qq{
		BEGIN;
		SELECT flowella.set_actor('$owner');
		$sql;
		COMMIT;});
}

is($node->safe_psql('postgres', 'SHOW flowella.verify_shared_cache_keys'), '10000',
	'the shared cache holds 10 000 keys by default');
is(verify_new_session('api'), 'VALID/1', 'a first verify reads the table');
is(verify_new_session('api'), 'VALID/0', 'a new session finds the key in the shared cache');

# A change through the API, committed by a session that ends at once (it
# never reads its own invalidation): the next new session reads the table.
as_owner(q{SELECT flowella.apikey_set_scopes(key_id, ARRAY['messages:read'])
			 FROM tokens WHERE name = 'api'});
is(verify_new_session('api'), 'INSUFFICIENT_SCOPE/1', 'a scope change is in the next new session');
is(verify_new_session('api'), 'INSUFFICIENT_SCOPE/0', '... and cached again');
as_owner(q{SELECT flowella.apikey_revoke(key_id) FROM tokens WHERE name = 'api'});
is(verify_new_session('api'), 'REVOKED/1', 'a revoke is in the next new session');

# DDL: with the guard disabled the cache may not be used (a direct write
# would not invalidate it), in a new session too.
is(verify_new_session('ddl'), 'VALID/1', 'ddl: read');
is(verify_new_session('ddl'), 'VALID/0', 'ddl: cached');
$node->safe_psql('postgres', 'ALTER TABLE flowella.api_keys DISABLE TRIGGER api_keys_guard');
is(verify_new_session('ddl'), 'VALID/1', 'ddl: a disabled trigger empties the shared cache');
is(verify_new_session('ddl'), 'VALID/1', 'ddl: ... which is not filled while it is disabled');
$node->safe_psql('postgres', 'ALTER TABLE flowella.api_keys ENABLE ALWAYS TRIGGER api_keys_guard');
is(verify_new_session('ddl'), 'VALID/1', 'ddl: the trigger enabled again');
is(verify_new_session('ddl'), 'VALID/0', 'ddl: ... cached again');

# A transaction that has written neither reads nor fills the shared cache:
# its latest snapshot shows its own uncommitted rows.
is($node->safe_psql('postgres', qq{
	BEGIN;
	SELECT pg_current_xact_id() IS NOT NULL;
	SET LOCAL ROLE flowella_apikey_verifier;
	SELECT v.code || '/' || pg_stat_get_xact_numscans('flowella.api_keys_prefix_key'::regclass)
	  FROM tokens t, LATERAL flowella.apikey_verify(t.token, 'messages:send') v
	 WHERE t.name = 'ddl';
	COMMIT;}), "t\nVALID/1", 'a transaction with an XID reads the table');

# Two-phase commit: the change becomes visible at COMMIT PREPARED, which
# runs no commit callback of the preparing session.
is(verify_new_session('prepared'), 'VALID/1', 'prepared: read');
is(verify_new_session('prepared'), 'VALID/0', 'prepared: cached');
$node->safe_psql('postgres', qq{
	BEGIN;
	SELECT flowella.set_actor('$owner');
	SELECT flowella.apikey_revoke(key_id) FROM tokens WHERE name = 'prepared';
	PREPARE TRANSACTION 'revoke_prepared';});
is(verify_new_session('prepared'), 'VALID/1',
	'prepared: VALID while prepared, read from the table');
is(verify_new_session('prepared'), 'VALID/1', '... and not cached meanwhile');
$node->safe_psql('postgres', "COMMIT PREPARED 'revoke_prepared'");
is(verify_new_session('prepared'), 'REVOKED/1', 'prepared: REVOKED after COMMIT PREPARED');
is(verify_new_session('prepared'), 'REVOKED/0', 'prepared: ... and cached again');

# Off: the shared cache takes no memory and verify answers the same.  Both
# settings are read from postgresql.conf (1.5 dropped verify_cache_keys
# from it with a WARNING: it was defined after the prefix was reserved).
$node->append_conf('postgresql.conf',
	"flowella.verify_shared_cache_keys = 0\nflowella.verify_cache_keys = 7\n");
$node->restart;
is($node->safe_psql('postgres', 'SHOW flowella.verify_cache_keys'), '7',
	'flowella.verify_cache_keys is taken from postgresql.conf');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM pg_shmem_allocations WHERE name = 'flowella_apikey key cache'}),
	'0', 'off: no shared memory');
is(verify_new_session('ddl'), 'VALID/1', 'off: verify reads the table');
is(verify_new_session('ddl'), 'VALID/1', 'off: ... every time in a new session');

$node->stop;
done_testing();
