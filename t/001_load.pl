# ai_ratelimit without shared_preload_libraries refuses clearly; with it, the
# daily window follows ai_ratelimit.timezone.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('no_preload');
$node->init;
$node->start;

# CREATE EXTENSION works without preload, so a dump can be restored anywhere
$node->safe_psql('postgres', 'CREATE EXTENSION ai_ratelimit');

foreach my $call (
	"SELECT * FROM ai_check_limit('user-42', 'pro')",
	"SELECT * FROM ai_enforce_limit('user-42', 'pro')",
	"SELECT * FROM ai_peek_limit('user-42', 'pro')",
	"SELECT ai_reset_limits('user-42')",
	"SELECT ai_record_usage('user-42', 'gpt-4o', 1, 1)",
	"SELECT ai_monthly_spend('user-42')",
	"SELECT * FROM ai_ratelimit_status",
	"SELECT * FROM ai_ratelimit_capacity()",
	"SELECT * FROM ai_ratelimit_saves()")
{
	my ($ret, $out, $err) = $node->psql('postgres', $call,
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	isnt($ret, 0, "refused without preload: $call");
	like($err, qr/ERROR:  55000: ai_ratelimit must be loaded via shared_preload_libraries/,
		"SQLSTATE 55000 and the message: $call");
	like($err, qr/HINT:  Add ai_ratelimit to shared_preload_libraries/,
		"hint says how to fix it: $call");
}
is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_usage'), '0',
	'nothing recorded');
# what touches only tables works without the counters
is($node->safe_psql('postgres', q{
	INSERT INTO ai_user_plans VALUES ('user-42', 'pro');
	INSERT INTO ai_user_limits (user_id, daily_limit) VALUES ('user-42', 7);
	UPDATE ai_plans SET daily_limit = 600 WHERE plan = 'pro';
	UPDATE ai_model_prices SET output_usd_per_mtok = 11 WHERE model = 'gpt-4o';
	INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
		cached_input_tokens, cost_cents) VALUES (now() - interval '100 days',
		current_date - 100, 'old', 'gpt-4o', 'gpt-4o', 1, 1, 0, 1);
	SELECT ai_purge_usage('90 days');
	TRUNCATE ai_user_plans;}), '1',
	'without preload, writing the configuration tables and ai_purge_usage work');
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'server unharmed');

# preload it, with a time zone far from UTC
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'ai_ratelimit'");
$node->append_conf('postgresql.conf', "ai_ratelimit.timezone = 'Pacific/Kiritimati'");
$node->restart;

is( $node->safe_psql(
		'postgres', q{
SELECT reset_at = (date_trunc('day', clock_timestamp() AT TIME ZONE 'Pacific/Kiritimati')
                   + interval '1 day') AT TIME ZONE 'Pacific/Kiritimati'
FROM ai_check_limit('user-42', 'pro')}),
	't',
	'daily window resets at midnight in ai_ratelimit.timezone');

is( $node->safe_psql(
		'postgres', q{
SELECT ai_record_usage('user-42', 'gpt-4o', 1000, 0);
SELECT day = (clock_timestamp() AT TIME ZONE 'Pacific/Kiritimati')::date FROM ai_usage}),
	"0.25\nt",
	'usage is dated in ai_ratelimit.timezone');

# an unknown zone is refused at reload, the old one stays
$node->append_conf('postgresql.conf', "ai_ratelimit.timezone = 'Mars/Olympus_Mons'");
$node->reload;
is($node->safe_psql('postgres', 'SHOW ai_ratelimit.timezone'),
	'Pacific/Kiritimati', 'an unknown time zone is refused');

$node->stop;
done_testing();
