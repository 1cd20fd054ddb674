# Without shared_preload_libraries (SPEC section 1): the extension installs
# and every function is correct; last-used tracking is the documented
# degradation: verify records nothing, never blocks and never errors.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('no_preload');
$node->init;
$node->start;

my $owner = 'c1000000-0000-4000-8000-000000000001';
$node->safe_psql('postgres', qq{
	CREATE EXTENSION flowella_apikey;
	SELECT flowella.plan_set('pro', ARRAY['messages:send', 'messages:read'], true);
	SELECT flowella.org_create('Plain Ltd', 'pro', '$owner');
});
is($node->safe_psql('postgres',
		"SELECT current_setting('shared_preload_libraries')"), '',
	'the library is not preloaded');

my $out = $node->safe_psql('postgres', qq{
	BEGIN;
	SELECT flowella.set_actor('$owner');
	SELECT key_id || ' ' || token FROM flowella.apikey_create(
		(SELECT org_id FROM flowella.orgs), 'plain', ARRAY['messages:send']);
	COMMIT;
});
my ($key_id, $token) = split / /, (grep { /flwl_/ } split /\n/, $out)[0];
like($token, qr/^flwl_live_[0-9A-Za-z]{46}$/, 'create works');

is($node->safe_psql('postgres',
		"SELECT code || ' ' || array_to_string(scopes, ',') FROM flowella.apikey_verify('$token', 'messages:send')"),
	'VALID messages:send', 'verify works');
is($node->safe_psql('postgres',
		"BEGIN READ ONLY; SELECT code FROM flowella.apikey_verify('$token'); COMMIT;"),
	'VALID', 'verify works in a READ ONLY transaction');
is($node->safe_psql('postgres',
		"SELECT pending IS NULL AND recorded = 0 FROM flowella.usage_stats()"),
	't', 'usage_stats reports that nothing is tracked');

# no background worker, and nothing ever writes last_used_at
is($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'flowella%'"),
	'0', 'no usage worker runs');
sleep(2);
is($node->safe_psql('postgres',
		"SELECT last_used_at IS NULL FROM flowella.api_keys WHERE key_id = '$key_id'"),
	't', 'last_used_at stays as it was');

is($node->safe_psql('postgres', qq{
	BEGIN;
	SELECT flowella.set_actor('$owner');
	SELECT flowella.apikey_revoke('$key_id') IS NOT NULL;
	COMMIT;
	SELECT code FROM flowella.apikey_verify('$token');
}), "\nt\nREVOKED", 'revoke works and is seen at once');

$node->stop;
done_testing();
