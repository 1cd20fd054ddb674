# Helpers the TAP tests share: what "the same keys" means when a database
# is compared before and after a dump, a restore or an upgrade.
package FlowellaTest;
use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;
our @EXPORT = qw(preloaded_node verify_uses wait_for_flush snapshot_queries
  snapshot_order take_snapshot);

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
# every audit record, every membership, and the verification of each token.
sub snapshot_queries
{
	my (@tokens) = @_;
	my $verify_all = join("\nUNION ALL\n", map {
		"SELECT $_ AS n, * FROM flowella.apikey_verify('$tokens[$_]', 'messages:read')"
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

1;
