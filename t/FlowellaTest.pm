# Helpers the TAP tests share: what "the same keys" means when a database
# is compared before and after a dump, a restore or an upgrade, and what
# "the same objects" means when two versions of the schema are compared.
package FlowellaTest;
use strict;
use warnings;
use Exporter 'import';
use File::Temp ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
our @EXPORT = qw(preloaded_node verify_uses wait_for_flush snapshot_queries
  snapshot_order take_snapshot catalog_listing listing_is);

# A started node that preloads the library, as production runs it, with
# any further postgresql.conf lines.
sub preloaded_node
{
	my ($name, $conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'flowella_apikey'\n" . ($conf // ''));
	$node->start;
	return $node;
}

# Verify every token once in $db and wait until the flush worker has
# written last_used_at for the $expected keys that are usable.
sub verify_uses
{
	my ($node, $db, $tokens, $expected) = @_;
	$node->safe_psql($db, "SELECT flowella.apikey_verify('$_')") for @$tokens;
	$node->poll_query_until($db,
		"SELECT count(*) = $expected FROM flowella.api_keys WHERE last_used_at IS NOT NULL")
	  or die 'last uses were not flushed';
}

# Wait until every use noted so far is written (or given up): entries
# leave shared memory only once their flush has committed.
sub wait_for_flush
{
	my ($node, $db) = @_;
	$node->poll_query_until($db, 'SELECT pending = 0 FROM flowella.usage_stats()')
	  or die 'pending uses were not flushed';
}

# Queries whose output must not change: every key column (the hash in hex),
# every audit record, every membership, and the verification of each token
# (its 1.1 columns, which every version since answers alike).
sub snapshot_queries
{
	my (@tokens) = @_;
	my $verify_all = join("\nUNION ALL\n", map {
		"SELECT $_ AS n, valid, code, key_id, org_id, scopes, mode"
		  . " FROM flowella.apikey_verify('$tokens[$_]', 'messages:read')"
	} 0 .. $#tokens) . "\nORDER BY n";
	return (
		keys => q{SELECT key_id, org_id, label, prefix, encode(secret_hash, 'hex'), scopes,
					mode, created_at, created_by, last_used_at, expires_at, revoked_at,
					revoked_by, replaces_key_id
				  FROM flowella.api_keys ORDER BY key_id},
		audit => q{SELECT event_id, org_id, key_id, action, actor_user_id, actor_ip,
					 trace_context, occurred_at, details
					 FROM flowella.audit_records ORDER BY event_id},
		members => 'SELECT org_id, user_id, role FROM flowella.members ORDER BY 1, 2',
		verify => $verify_all,
	);
}

# The order in which to run the snapshot queries when comparing: the data
# first, the verifications last, since every successful verify is a use
# that a later flush writes to last_used_at.
sub snapshot_order
{
	my (%snap) = @_;
	return ((grep { $_ ne 'verify' } sort keys %snap), 'verify');
}

# Run the snapshot queries in $db and return their outputs.  The
# verifications run first and their uses are written before the data is
# read, so that nothing pending changes the data afterwards: what a dump or
# an upgrade then finds is what was snapshot.
sub take_snapshot
{
	my ($node, $db, %snap) = @_;
	my %out = (verify => $node->safe_psql($db, $snap{verify}));
	wait_for_flush($node, $db);
	$out{$_} = $node->safe_psql($db, $snap{$_}) for grep { $_ ne 'verify' } sort keys %snap;
	return %out;
}

# SQL for a role in a listing: the extension owner (the bootstrap superuser
# of whichever cluster runs the test) is EXTOWNER, so that a listing does not
# depend on who ran initdb.
sub _role_sql
{
	my ($oid) = @_;
	return "CASE $oid WHEN 0 THEN 'PUBLIC' "
	  . "WHEN (SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'flowella_apikey') "
	  . "THEN 'EXTOWNER' ELSE ${oid}::pg_catalog.regrole::text END";
}

# SQL for an ACL in a listing: '-' for the default (NULL), otherwise
# grantee=PRIVILEGE,...(* grantable)/grantor items, sorted, so that neither
# the order of the GRANTs nor the owner's name shows.
sub _acl_sql
{
	my ($acl) = @_;
	my $grantee = _role_sql('x.grantee');
	my $grantor = _role_sql('x.grantor');
	return qq{CASE WHEN $acl IS NULL THEN '-' ELSE '{' || coalesce((
		SELECT string_agg(item, ' ' ORDER BY item COLLATE "C") FROM (
			SELECT $grantee || '=' || string_agg(x.privilege_type
				|| CASE WHEN x.is_grantable THEN '*' ELSE '' END, ','
				ORDER BY x.privilege_type COLLATE "C") || '/' || $grantor AS item
			  FROM pg_catalog.aclexplode($acl) x
			 GROUP BY x.grantee, x.grantor) items), '') || '}' END};
}

# Every member object of the extension in $db, and everything about it that
# a DBA or an attacker would care about: definitions, ACLs, flags, columns,
# constraints, indexes, triggers and whether they fire, policies, views,
# types, sequences, comments, the roles the script creates and the tables
# pg_dump dumps.  No OID, no timestamp, no role name that depends on the
# cluster, one ordering (bytewise, whatever the database's collation): the
# same schema gives the same text in any cluster, so a listing can be kept
# as a fixture (t/data/).
sub catalog_listing
{
	my ($node, $db) = @_;
	my $sql = q{
WITH ext AS (SELECT oid, extowner FROM pg_extension WHERE extname = 'flowella_apikey'),
members AS (
	SELECT d.classid, d.objid FROM pg_depend d, ext
	 WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid
	   AND d.deptype = 'e')
SELECT line FROM (
SELECT 'member ' || pg_describe_object(classid, objid, 0) FROM members
UNION ALL
SELECT 'function ' || p.oid::regprocedure || ' acl=' || ACL(p.proacl)
	   || ' owner_is_ext_owner=' || (p.proowner = (SELECT extowner FROM ext))
	   || E'\n' || pg_get_functiondef(p.oid)
  FROM pg_proc p WHERE p.pronamespace = 'flowella'::regnamespace AND p.prokind <> 'a'
UNION ALL
SELECT 'relation ' || c.relname || ' kind=' || c.relkind::text || ' acl=' || ACL(c.relacl)
	   || ' rls=' || c.relrowsecurity || ' force=' || c.relforcerowsecurity
	   || ' options=' || coalesce(c.reloptions::text, '-')
	   || ' persistence=' || c.relpersistence::text || ' replident=' || c.relreplident::text
	   || ' owner_is_ext_owner=' || (c.relowner = (SELECT extowner FROM ext))
  FROM pg_class c WHERE c.relnamespace = 'flowella'::regnamespace
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
	   || ' notnull=' || a.attnotnull || ' collation=' || coalesce(co.collname, '-')
	   || ' default=' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-')
	   || ' acl=' || ACL(a.attacl) || ' pos=' || a.attnum
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
  LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 100
 WHERE c.relnamespace = 'flowella'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint ' || conrelid::regclass || '.' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'flowella'::regnamespace
UNION ALL
SELECT 'index ' || pg_get_indexdef(indexrelid)
  FROM pg_index WHERE indrelid IN (SELECT oid FROM pg_class
								   WHERE relnamespace = 'flowella'::regnamespace)
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace = 'flowella'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'policy ' || tablename || '.' || policyname || ' ' || cmd || ' ' || roles::text
	   || ' using=' || coalesce(qual, '-') || ' check=' || coalesce(with_check, '-')
  FROM pg_policies WHERE schemaname = 'flowella'
UNION ALL
SELECT 'view ' || c.relname || E'\n' || pg_get_viewdef(c.oid)
  FROM pg_class c WHERE c.relnamespace = 'flowella'::regnamespace AND c.relkind = 'v'
UNION ALL
SELECT 'type ' || t.typname || ' acl=' || ACL(t.typacl)
	   || ' owner_is_ext_owner=' || (t.typowner = (SELECT extowner FROM ext))
  FROM pg_type t WHERE t.typnamespace = 'flowella'::regnamespace
UNION ALL
SELECT 'sequence ' || s.seqrelid::regclass || ' ' || format_type(s.seqtypid, NULL)
	   || ' start=' || s.seqstart || ' increment=' || s.seqincrement
	   || ' min=' || s.seqmin || ' max=' || s.seqmax || ' cache=' || s.seqcache
	   || ' cycle=' || s.seqcycle
  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
 WHERE c.relnamespace = 'flowella'::regnamespace
UNION ALL
SELECT 'schema ' || nspname || ' acl=' || ACL(nspacl)
	   || ' owner_is_ext_owner=' || (nspowner = (SELECT extowner FROM ext))
  FROM pg_namespace WHERE nspname = 'flowella'
UNION ALL
SELECT 'comment ' || pg_describe_object(d.classoid, d.objoid, d.objsubid) || ': ' || d.description
  FROM pg_description d
 WHERE (d.classoid, d.objoid) IN (SELECT classid, objid FROM members)
	OR (d.classoid <> 'pg_extension'::regclass
		AND pg_describe_object(d.classoid, d.objoid, d.objsubid) ~ '\mflowella\.')
UNION ALL
SELECT 'role ' || r.rolname || ' super=' || r.rolsuper || ' inherit=' || r.rolinherit
	   || ' createrole=' || r.rolcreaterole || ' createdb=' || r.rolcreatedb
	   || ' login=' || r.rolcanlogin || ' replication=' || r.rolreplication
	   || ' bypassrls=' || r.rolbypassrls || ' connlimit=' || r.rolconnlimit
	   || ' config=' || coalesce(r.rolconfig::text, '-')
	   || ' member_of=' || coalesce((SELECT string_agg(m.roleid::regrole::text, ','
														ORDER BY m.roleid::regrole::text COLLATE "C")
									 FROM pg_auth_members m WHERE m.member = r.oid), '-')
  FROM pg_roles r WHERE r.rolname LIKE 'flowella\_apikey\_%'
UNION ALL
SELECT 'dumped ' || cfg::regclass || ' where=' || coalesce(cond, '-')
  FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS u(cfg, cond)
 WHERE e.extname = 'flowella_apikey'
) AS listing(line)
ORDER BY line COLLATE "C"
};
	$sql =~ s/ACL\(([\w.]+)\)/_acl_sql($1)/ge;
	return $node->safe_psql($db, $sql);
}

# Pass when the listing $got is $expected, line for line and in the same
# order; on failure the diagnostics show a unified diff (expected -> got).
sub listing_is
{
	my ($got, $expected, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	if ($got eq $expected)
	{
		pass($name);
		return 1;
	}
	my @files;
	for my $text ($expected, $got)
	{
		my $f = File::Temp->new(DIR => $PostgreSQL::Test::Utils::tmp_check);
		print $f $text, "\n";
		close $f;
		push @files, $f;
	}
	my ($diff) = run_command(
		[ 'diff', '-U2', '--label', 'expected', '--label', 'got', map { $_->filename } @files ]);
	fail($name);
	diag($diff);
	return 0;
}

1;
