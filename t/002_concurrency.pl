# Exact limits under concurrency: 16 sessions hammering one user with pgbench.
# Each pgbench transaction logs the answer it got, and the counts are checked
# against the limits: never one more, never one fewer.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('concurrency');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'ai_ratelimit'");
$node->append_conf('postgresql.conf', "max_connections = 40");
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans (plan, burst_limit, burst_window, daily_limit, monthly_budget_cents) VALUES
    ('burst50',  50,   '1 hour',    NULL, NULL),
    ('daily200', NULL, '1 minute',  200,  NULL),
    ('cap10',    NULL, '1 minute',  NULL, 10),
    ('slide5',   5,    '2 seconds', NULL, NULL);
CREATE TABLE results (test text, allowed boolean, b timestamptz, a timestamptz);
CREATE FUNCTION timed_check(u text, p text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    b timestamptz := clock_timestamp();
    ok boolean;
BEGIN
    SELECT allowed INTO ok FROM ai_check_limit(u, p);
    INSERT INTO results VALUES ('slide', ok, b, clock_timestamp());
END $$;
});

sub count_allowed
{
	my ($test) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE allowed) || '/' || count(*) FROM results WHERE test = '$test'");
}

# burst: 16 clients x 20 checks = 320 requests in one window of an hour
$node->pgbench('-n -c 16 -j 4 -t 20', 0, [qr/processed: 320\/320/], [qr/^$/],
	'burst: 16 clients hammer one user',
	{ 'burst' => q{INSERT INTO results SELECT 'burst', allowed FROM ai_check_limit('hot-burst', 'burst50');} });
is(count_allowed('burst'), '50/320', 'burst: exactly burst_limit allowed');
is($node->safe_psql('postgres', "SELECT remaining FROM ai_peek_limit('hot-burst', 'daily200')"),
	'149', 'burst: refused requests took nothing from the daily count (200 - 50 - 1)');

# daily: 16 clients x 25 checks = 400 requests against a daily limit of 200
$node->pgbench('-n -c 16 -j 4 -t 25', 0, [qr/processed: 400\/400/], [qr/^$/],
	'daily: 16 clients hammer one user',
	{ 'daily' => q{INSERT INTO results SELECT 'daily', allowed FROM ai_check_limit('hot-daily', 'daily200');} });
is(count_allowed('daily'), '200/400', 'daily: exactly daily_limit allowed');
is($node->safe_psql('postgres',
		"SELECT allowed, limited_by FROM ai_peek_limit('hot-daily', 'daily200')"),
	'f|daily', 'daily: the next request is refused by the daily limit');

# budget: 16 parallel requests, each estimating 1 cent, against a 10-cent cap
$node->pgbench('-n -c 16 -j 4 -t 1', 0, [qr/processed: 16\/16/], [qr/^$/],
	'budget: 16 parallel reservations',
	{ 'budget' => q{INSERT INTO results SELECT 'budget', allowed FROM ai_check_limit('hot-budget', 'cap10', 1);} });
is(count_allowed('budget'), '10/16', 'budget: exactly 10 of 16 one-cent estimates fit in 10 cents');

# budget, settled: each allowed call records a real cost of exactly 1 cent
# (1000 output tokens of gpt-4o) against its reservation
$node->pgbench('-n -c 16 -j 4 -t 5', 0, [qr/processed: 80\/80/], [qr/^$/],
	'budget: check, call and record from 16 sessions',
	{ 'settle' => q{
WITH c AS (SELECT * FROM ai_check_limit('hot-budget-2', 'cap10', 1)),
     r AS (SELECT CASE WHEN allowed
                       THEN ai_record_usage('hot-budget-2', 'gpt-4o', 0, 1000, 0, reservation_id)
                  END AS cost FROM c)
INSERT INTO results SELECT 'settle', allowed FROM c, r;
} });
is(count_allowed('settle'), '10/80', 'settled budget: exactly 10 calls of 1 cent allowed');
is($node->safe_psql('postgres', "SELECT ai_monthly_spend('hot-budget-2')"),
	'10', 'settled budget: the month spent exactly the cap, not a cent more');
is($node->safe_psql('postgres',
		"SELECT count(*) FROM ai_usage WHERE user_id = 'hot-budget-2' AND reservation_id IS NOT NULL"),
	'10', 'settled budget: every call settled its own reservation');

# the cached month's spend stays exact while records race with reloads: 8
# clients check (budget plan) and record for one user while a ninth keeps
# invalidating every cached spend (a DELETE of no rows fires the usage
# trigger), so spend is reloaded again and again with records in flight
$node->safe_psql('postgres', "INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents) VALUES ('wide', NULL, NULL, 1e12)");
$node->pgbench('-n -c 9 -j 3 -T 5', 0, [qr/processed: \d+/], [qr/^$/],
	'spend: records racing with cache reloads',
	{
		'record@9' => q{
SELECT allowed FROM ai_check_limit('racer', 'wide', 1);
SELECT ai_record_usage('racer', 'gpt-4o', 1000, 1000);
},
		'bump@1' => q{DELETE FROM ai_usage WHERE false;}
	});
is($node->safe_psql('postgres', q{
	SELECT count(*) > 100 FROM ai_usage WHERE user_id = 'racer'}),
	't', 'spend: many calls were recorded during the race');
is($node->safe_psql('postgres', q{
	SELECT p.allowed AND s.month_spend_cents = ai_monthly_spend('racer') AND s.in_flight_cents = 0
	FROM ai_peek_limit('racer', 'wide') p, ai_ratelimit_status s WHERE s.user_id = 'racer'}),
	't', 'spend: loaded again after the race, the cache equals the tables');

# then, with no more reloads, 8 clients keep checking and recording: the
# cache is kept up to date by each commit, and still equals the tables
$node->pgbench('-n -c 8 -j 2 -T 3', 0, [qr/processed: \d+/], [qr/^$/],
	'spend: records keep the cached spend',
	{ 'keep' => q{
SELECT allowed FROM ai_check_limit('racer', 'wide', 1);
SELECT ai_record_usage('racer', 'gpt-4o', 1000, 1000);
} });
is($node->safe_psql('postgres', q{
	SELECT s.month_spend_cents = ai_monthly_spend('racer') AND s.in_flight_cents = 0
	FROM ai_ratelimit_status s WHERE s.user_id = 'racer'}),
	't', 'spend: after concurrent records the cached month spend equals the tables, exactly');

# sliding window: 5 per 2 seconds, hammered by 4 clients for 7 seconds
$node->pgbench('-n -c 4 -j 2 -T 7', 0, [qr/processed: \d+/], [qr/^$/],
	'slide: 4 clients for 7 seconds',
	{ 'slide' => q{SELECT timed_check('hot-slide', 'slide5');} });
# for each allowed request i, count the allowed requests that certainly ran
# within [b_i, b_i + 2 s): started at or after b_i, finished before b_i + 2 s
my $worst = $node->safe_psql('postgres', q{
WITH ok AS (SELECT b, a FROM results WHERE test = 'slide' AND allowed)
SELECT max(n) FROM (
    SELECT (SELECT count(*) FROM ok j WHERE j.b >= i.b AND j.a < i.b + interval '2 seconds') AS n
    FROM ok i) s});
cmp_ok($worst, '<=', 5, "slide: no 2-second span holds more than 5 allowed requests (max seen $worst)");
my ($allowed, $total) = split /\//, count_allowed('slide');
cmp_ok($allowed, '>=', 15, "slide: the window slides: $allowed of $total allowed over 7 s");
cmp_ok($allowed, '<=', 25, "slide: at most 5 per window over 7 s");
cmp_ok($total, '>', 100, "slide: the window was hammered ($total requests)");

is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared state is consistent: no leaked reservation or record in flight');
$node->stop;
done_testing();
