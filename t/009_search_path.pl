# A database's owner, not a superuser, sets that database's search_path
# (ALTER DATABASE ... SET search_path) to a schema of their own whose
# operators, functions, aggregate and type shadow pg_catalog's.  Whatever
# SQL the extension runs without a SECURITY DEFINER function's pinned
# search_path (the usage flush worker, the audit triggers, the CHECK of
# api_keys) would resolve names there and run the owner's code as the
# superuser behind it.  None of it may run: the owner stays what they are.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowellaTest;

my $node = preloaded_node('search_path', q{
flowella.usage_flush_interval = 1
});

my $owner = 'f9000000-0000-4000-8000-000000000001';
my $member = 'f9000000-0000-4000-8000-000000000002';
my $other = 'f9000000-0000-4000-8000-000000000003';

$node->safe_psql('postgres', q{
	CREATE ROLE regress_db_owner LOGIN;
	CREATE DATABASE regress_shop OWNER regress_db_owner;
});

# The DBA installs and provisions, before anything is planted.
$node->safe_psql('regress_shop', qq{
	CREATE EXTENSION flowella_apikey;
	SELECT flowella.plan_set('pro', ARRAY['messages:send', 'messages:read'], true);
	SELECT flowella.org_create('Shop Ltd', 'pro', '$owner');
});
my $org = $node->safe_psql('regress_shop', 'SELECT org_id FROM flowella.orgs');
my $token = (grep { /^flwl_/ } split /\n/, $node->safe_psql('regress_shop', qq{
	BEGIN;
	SELECT flowella.set_actor('$owner');
	SELECT token FROM flowella.apikey_create('$org', 'used', ARRAY['messages:send']);
	SELECT token FROM flowella.apikey_create('$org', 'changed directly', ARRAY['messages:send']);
	COMMIT;
}))[0];

# The owner plants the trap: evil.trap notes each call and, called by a
# superuser, makes the owner one.  Every shadow runs it, then does what the
# pg_catalog original does, so that nothing visibly breaks.
my $plant = q{
CREATE SCHEMA evil;
CREATE TABLE evil.calls (what text, as_superuser boolean);
GRANT USAGE ON SCHEMA evil TO PUBLIC;
GRANT INSERT ON evil.calls TO PUBLIC;
CREATE FUNCTION evil.trap(what text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
	INSERT INTO evil.calls VALUES (what, current_setting('is_superuser') = 'on');
	IF current_setting('is_superuser') = 'on' THEN
		ALTER ROLE regress_db_owner SUPERUSER;
	END IF;
	RETURN true;
END $$;
-- types: a cast to int4 (or a declared int4) lands on the domain
CREATE DOMAIN evil.int4 AS pg_catalog.int4 CHECK (evil.trap('type int4'));
-- count(*)
CREATE FUNCTION evil.count_step(n pg_catalog.int8) RETURNS pg_catalog.int8
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN PERFORM evil.trap('count(*)'); RETURN n + 1; END $$;
CREATE AGGREGATE evil.count(*) (SFUNC = evil.count_step, STYPE = pg_catalog.int8,
								INITCOND = '0');
CREATE FUNCTION evil.now() RETURNS pg_catalog.timestamptz
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN PERFORM evil.trap('now()'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION evil.clock_timestamp() RETURNS pg_catalog.timestamptz
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN PERFORM evil.trap('clock_timestamp()'); RETURN pg_catalog.clock_timestamp(); END $$;
CREATE FUNCTION evil.gen_random_uuid() RETURNS pg_catalog.uuid
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN PERFORM evil.trap('gen_random_uuid()'); RETURN pg_catalog.gen_random_uuid(); END $$;
CREATE FUNCTION evil.unnest(a anyarray) RETURNS SETOF anyelement
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN PERFORM evil.trap('unnest()'); RETURN QUERY SELECT pg_catalog.unnest(a); END $$;
};
# Operators the extension's queries use, or could: [name, left, right,
# result, the pg_catalog function behind the original].
my @operators = (
	[ '-', 'int4', 'int4', 'int4', 'int4mi' ],
	[ '-', 'int8', 'int8', 'int8', 'int8mi' ],
	[ '||', 'text', 'text', 'text', 'textcat' ],
	[ '=', 'uuid', 'uuid', 'bool', 'uuid_eq' ],
	[ '=', 'text', 'text', 'bool', 'texteq' ],
	[ '<>', 'text', 'text', 'bool', 'textne' ],
	[ '=', 'text[]', 'text[]', 'bool', 'array_eq' ],
	[ '<>', 'text[]', 'text[]', 'bool', 'array_ne' ],
	[ '=', 'int8', 'int8', 'bool', 'int8eq' ],
	[ '<=', 'int8', 'int8', 'bool', 'int8le' ],
	[ '=', 'timestamptz', 'timestamptz', 'bool', 'timestamptz_eq' ],
	[ '<', 'timestamptz', 'timestamptz', 'bool', 'timestamptz_lt' ],
	[ '<=', 'timestamptz', 'timestamptz', 'bool', 'timestamptz_le' ],
	[ '>', 'timestamptz', 'timestamptz', 'bool', 'timestamptz_gt' ],
	[ '>=', 'timestamptz', 'timestamptz', 'bool', 'timestamptz_ge' ],
);
my $n = 0;
for my $op (@operators)
{
	my ($name, $left, $right, $result, $func) = @$op;
	$n++;
	$plant .= qq{
CREATE FUNCTION evil.op_$n(a pg_catalog.$left, b pg_catalog.$right)
RETURNS pg_catalog.$result LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$
BEGIN PERFORM evil.trap('$left $name $right'); RETURN pg_catalog.$func(a, b); END \$\$;
CREATE OPERATOR evil.$name (LEFTARG = pg_catalog.$left, RIGHTARG = pg_catalog.$right,
							FUNCTION = evil.op_$n);
};
}
$plant .= q{
ALTER DATABASE regress_shop SET search_path = evil, pg_catalog;
};
$node->safe_psql('regress_shop', $plant, extra_params => [ '-U', 'regress_db_owner' ]);

# From here on every session of regress_shop searches evil first: the DBA's
# own statements below name everything with its schema.
sub evil_calls
{
	return $node->safe_psql('regress_shop',
		q{SELECT COALESCE(pg_catalog.string_agg(what, ', '), 'none') FROM evil.calls});
}

sub owner_is_superuser
{
	return $node->safe_psql('postgres',
		q{SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_db_owner'});
}

# The trap works: an unqualified operator, in the owner's own session.
$node->safe_psql('regress_shop', 'SELECT 2 - 1', extra_params => [ '-U', 'regress_db_owner' ]);
is(evil_calls(), 'int4 - int4', 'an unqualified operator resolves to the planted one');
$node->safe_psql('regress_shop', 'TRUNCATE evil.calls', extra_params => [ '-U', 'regress_db_owner' ]);

# (a) The flush worker, as the bootstrap superuser in this database.
is($node->safe_psql('regress_shop', "SELECT code FROM flowella.apikey_verify('$token')"),
	'VALID', 'the key verifies');
ok($node->poll_query_until('regress_shop',
		q{SELECT last_used_at IS NOT NULL FROM flowella.api_keys
		   WHERE label OPERATOR(pg_catalog.=) 'used'}),
	'the flush worker wrote last_used_at');
is(evil_calls(), 'none', 'the flush worker ran none of the planted code');
is(owner_is_superuser(), 'f', 'the database owner is not a superuser after a flush');

# (b) The DBA, a superuser, changes keys and members directly and through
# the API: audit triggers, the CHECK of api_keys, guards and the API's own
# queries run in this search_path.
$node->safe_psql('regress_shop', qq{
	UPDATE flowella.api_keys SET scopes = ARRAY['messages:read']
	 WHERE label OPERATOR(pg_catalog.=) 'changed directly';
	UPDATE flowella.api_keys SET revoked_at = pg_catalog.clock_timestamp()
	 WHERE label OPERATOR(pg_catalog.=) 'changed directly';
	BEGIN;
	SELECT flowella.set_actor('$owner');
	INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
	VALUES ('$org', 'inserted directly', 'flwl_live_Direct01',
			pg_catalog.sha256('direct'::pg_catalog.bytea), 'live', '$owner');
	INSERT INTO flowella.members (org_id, user_id, role) VALUES ('$org', '$member', 'user');
	UPDATE flowella.members SET role = 'admin' WHERE user_id OPERATOR(pg_catalog.=) '$member';
	DELETE FROM flowella.members WHERE user_id OPERATOR(pg_catalog.=) '$member';
	COMMIT;
	BEGIN;
	SELECT flowella.set_actor('$owner');
	SELECT flowella.plan_set('team', ARRAY['messages:send'], false);
	SELECT flowella.org_create('Other Ltd', 'team', '$other');
	SELECT flowella.member_set('$org', '$member', 'admin');
	SELECT flowella.member_set('$org', '$member', 'read_only');
	SELECT flowella.member_remove('$org', '$member');
	SELECT pg_catalog.count(*) FROM flowella.apikey_create('$org', 'by the API', NULL);
	SELECT flowella.apikey_set_scopes(key_id, ARRAY['messages:send'])
	  FROM flowella.api_keys WHERE label OPERATOR(pg_catalog.=) 'by the API';
	SELECT pg_catalog.count(*) FROM flowella.api_keys k,
		   LATERAL flowella.apikey_replace(k.key_id) r
	 WHERE k.label OPERATOR(pg_catalog.=) 'by the API';
	SELECT flowella.apikey_revoke(key_id)
	  FROM flowella.api_keys WHERE label OPERATOR(pg_catalog.=) 'by the API';
	SELECT pg_catalog.count(*) FROM flowella.apikey_list('$org');
	COMMIT;
});
my ($rc, $out, $err) = $node->psql('regress_shop', qq{
	INSERT INTO flowella.api_keys (org_id, label, prefix, secret_hash, mode, created_by)
	VALUES ('$org', 'bad', 'flwl_live_Direct02', '\\x00', 'live', '$owner');
});
like($err, qr/invalid value in column "secret_hash"/, 'the CHECK refused a bad row');
is($node->safe_psql('regress_shop', q{
	SELECT pg_catalog.string_agg(action, ', ' ORDER BY event_id)
	  FROM flowella.audit_records
	 WHERE event_id OPERATOR(pg_catalog.>) 3}),
	join(', ',
		'key.scopes_changed', 'key.revoked',           # direct updates
		'key.created', ('member.role_changed') x 3,    # direct inserts, member changes
		('member.role_changed') x 4,                   # org_create, member_set/remove
		'key.created', 'key.scopes_changed', 'key.created',   # create, scopes, replace
		'key.revoked', 'key.revoked'),                 # both keys labelled 'by the API'
	'every change was audited');
is(evil_calls(), 'none', 'the triggers, the CHECK and the API ran none of the planted code');
is(owner_is_superuser(), 'f', 'the database owner is still not a superuser');

# And a flush round after all that, with the plans of this backend's
# triggers cached.
is($node->safe_psql('regress_shop', "SELECT code FROM flowella.apikey_verify('$token')"),
	'VALID', 'the key verifies again');
ok($node->poll_query_until('regress_shop', q{
	SELECT flushes OPERATOR(pg_catalog.>=) 2 AND pending OPERATOR(pg_catalog.=) 0
	  FROM flowella.usage_stats()}),
	'a second flush ran');
is(evil_calls(), 'none', 'no planted code ran at all');
is(owner_is_superuser(), 'f', 'the database owner is not a superuser');

$node->stop;
done_testing();
