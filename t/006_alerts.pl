# Soft budget alerts: crossing a plan's alert threshold sends
# pg_notify('ai_ratelimit', json) once per user per month, at commit, and a
# session that LISTENs receives it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('alerts');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'ai_ratelimit'");
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents, alert_percents)
VALUES ('alerting', NULL, NULL, 10, '{50,80,100}');
INSERT INTO ai_user_plans VALUES ('ann', 'alerting'), ('ben', 'alerting');
});

# one psql session LISTENs, records, and prints what it received
sub listen_and_run
{
	my ($sql) = @_;
	my ($stdout, $stderr);
	$node->psql('postgres', "LISTEN ai_ratelimit;\n$sql",
		stdout => \$stdout, stderr => \$stderr);
	my @payloads = $stdout =~ /Asynchronous notification "ai_ratelimit" with payload "(.*?)" received/g;
	return @payloads;
}

# 4 cents of 10: below every threshold
my @got = listen_and_run("SELECT ai_record_usage('ann', 'gpt-4o', 0, 4000);");
is(scalar(@got), 0, '40% of the budget: no alert');

# to 5 cents: crosses 50%
@got = listen_and_run("SELECT ai_record_usage('ann', 'gpt-4o', 0, 1000);");
is(scalar(@got), 1, 'crossing 50% sends one alert');
like($got[0], qr/^\{"event": "budget_alert", "user_id": "ann", "plan": "alerting", "threshold_percent": 50, "spend_cents": 5, "budget_cents": 10, "month": "\d{4}-\d\d", "exhausted": false\}$/,
	'the payload is JSON naming user, plan, threshold, spend, budget and month');

# a record that rolls back sends nothing, and does not use up the alert
@got = listen_and_run("BEGIN; SELECT ai_record_usage('ann', 'gpt-4o', 0, 4000); ROLLBACK;");
is(scalar(@got), 0, 'a rolled-back record sends no alert');

# one call jumping over 80% and 100% at once sends both
@got = listen_and_run("SELECT ai_record_usage('ann', 'gpt-4o', 0, 6000);");
is(join(',', map { /"threshold_percent": (\d+)/; $1 } @got), '80,100',
	'one call crossing 80% and 100% sends both alerts');

# later calls in the same month: no repeats
@got = listen_and_run("SELECT ai_record_usage('ann', 'gpt-4o', 0, 1000); SELECT ai_record_usage('ann', 'gpt-4o', 0, 1000);");
is(scalar(@got), 0, 'no alert repeats in the same month');

# after a restart the spend is reloaded: still no repeat
$node->restart;
@got = listen_and_run("SELECT ai_record_usage('ann', 'gpt-4o', 0, 1000);");
is(scalar(@got), 0, 'no repeat after a restart');

# a per-user budget override changes the thresholds' base
$node->safe_psql('postgres', "INSERT INTO ai_user_limits (user_id, monthly_budget_cents) VALUES ('ben', 100)");
@got = listen_and_run("SELECT ai_record_usage('ben', 'gpt-4o', 0, 49000);");
is(scalar(@got), 0, 'ben at 49 of his own 100 cents: no alert');
@got = listen_and_run("SELECT ai_record_usage('ben', 'gpt-4o', 0, 2000);");
like($got[0] // '', qr/"user_id": "ben".*"threshold_percent": 50, "spend_cents": 51, "budget_cents": 100/,
	'the override budget is the base of the alert');

# two sessions crossing at the same time: exactly one alert
$node->safe_psql('postgres', "INSERT INTO ai_user_plans VALUES ('cat', 'alerting')");
my @all;
foreach my $i (1 .. 2)
{
	push @all, listen_and_run("SELECT ai_record_usage('cat', 'gpt-4o', 0, 3000);");
}
is(scalar(@all), 1, 'two calls that together cross 50% send one alert');

# a threshold above 100% of a budget near the top of the money range:
# 256% of 72,057,594.037927937 dollars is past what 64 bits hold, so the
# threshold is out of reach (it once wrapped to a fraction of a cent)
$node->safe_psql('postgres', q{
INSERT INTO ai_plans (plan, monthly_budget_cents, alert_percents)
VALUES ('vast', 7205759403.7927937, '{256}');
INSERT INTO ai_user_plans VALUES ('dee', 'vast');
});
@got = listen_and_run("SELECT ai_record_usage('dee', 'gpt-4o', 0, 1000);");
is(scalar(@got), 0, 'a threshold past the money range never fires on a 1-cent call');

# every alert is also a row, in the recording transaction: a listener that
# was down polls them; a rolled-back record left none, repeats none
is($node->safe_psql('postgres',
		q{SELECT string_agg(user_id || ':' || threshold_percent || ':' || spend_cents || '/' || budget_cents, ' ' ORDER BY id) FROM ai_alerts}),
	'ann:50:5/10 ann:80:11/10 ann:100:11/10 ben:50:51/100 cat:50:6/10',
	'each alert is a row: user, threshold, spend and budget, once each');
is($node->safe_psql('postgres',
		q{SELECT count(*) FROM ai_alerts WHERE month = date_trunc('month', now() AT TIME ZONE 'UTC')::date AND plan IN ('alerting')}),
	'5', 'with the month (first day) and the plan');
$node->safe_psql('postgres',
	q{UPDATE ai_alerts SET acknowledged_at = now() WHERE id IN (SELECT id FROM ai_alerts WHERE acknowledged_at IS NULL ORDER BY id LIMIT 3)});
is($node->safe_psql('postgres', q{SELECT count(*) FROM ai_alerts WHERE acknowledged_at IS NULL}), '2',
	'acknowledged rows leave the unhandled ones');
@got = listen_and_run("SELECT ai_record_usage('ann', 'gpt-4o', 0, 1000);");
is($node->safe_psql('postgres', q{SELECT count(*) FROM ai_alerts WHERE user_id = 'ann'}), '3',
	'a later record of the month adds no row');

# a spent budget alerts: estimates stop admissions short of the cap, so the
# first refusal in the window writes the 100% ("exhausted") row, from a
# worker of its own: also when the refusal is ai_enforce_limit's ERROR
$node->safe_psql('postgres', q{
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents, alert_percents)
VALUES ('spent', NULL, NULL, 10, '{50}');
INSERT INTO ai_user_plans VALUES ('eve', 'spent'), ('fay', 'spent');
SELECT ai_record_usage('eve', 'gpt-4o', 0, 9900), ai_record_usage('fay', 'gpt-4o', 0, 9900);
});
@got = listen_and_run("SELECT allowed, limited_by, retryable FROM ai_check_limit('eve', NULL, 1); SELECT pg_sleep(2);");
is(scalar(@got), 1, 'the first refusal of a spent budget sends one alert');
like($got[0] // '', qr/"user_id": "eve", "plan": "spent", "threshold_percent": 100, "spend_cents": 9.9, "budget_cents": 10, .*"exhausted": true\}$/,
	'it says the budget is exhausted, at 100%');
@got = listen_and_run("SELECT allowed FROM ai_check_limit('eve', NULL, 1); SELECT pg_sleep(1);");
is(scalar(@got), 0, 'later refusals of the window send nothing');
my ($ret, $out, $err) = $node->psql('postgres', "SELECT * FROM ai_enforce_limit('fay', NULL, 1)");
like($err, qr/Monthly AI budget exceeded/, 'ai_enforce_limit refuses with an error');
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM ai_alerts WHERE user_id = 'fay' AND threshold_percent = 100})
  or diag('no exhausted row for fay');
is($node->safe_psql('postgres',
		q{SELECT string_agg(user_id || ':' || threshold_percent || ':' || spend_cents, ' ' ORDER BY user_id, threshold_percent) FROM ai_alerts WHERE plan = 'spent'}),
	'eve:50:9.9 eve:100:9.9 fay:50:9.9 fay:100:9.9',
	'one exhausted row each, even for a refusal whose transaction rolled back');

# an account's budget too
$node->safe_psql('postgres', q{
INSERT INTO ai_accounts (account_id, parent_id, alert_percents) VALUES ('acme', NULL, '{90}');
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES ('acme', 'gus', true);
INSERT INTO ai_rules (scope, scope_id, metric, "window", max_value) VALUES ('account', 'acme', 'cents', 'month', 10);
SELECT ai_record_usage('gus', 'gpt-4o', 0, 9500);
});
@got = listen_and_run("SELECT limited_by, retryable FROM ai_check_limit('gus', 'pro', 1); SELECT pg_sleep(2);");
like($got[0] // '', qr/"event": "account_budget_alert", "account_id": "acme", .*"threshold_percent": 100, "spend_cents": 9.5, "budget_cents": 10, .*"exhausted": true\}$/,
	'a spent account budget sends its exhausted alert');
is($node->safe_psql('postgres',
		q{SELECT string_agg(threshold_percent::text, ',' ORDER BY threshold_percent) FROM ai_account_alerts WHERE account_id = 'acme'}),
	'90,100', 'the account has its 90% and its exhausted row');

# a firing that rolls back re-arms its threshold: a record that crossed it
# meanwhile left it to the firing one; the next record fires it
$node->safe_psql('postgres', q{
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents, alert_percents)
VALUES ('rearm', NULL, NULL, 10, '{50}'), ('edit', NULL, NULL, 10, '{50,80}');
INSERT INTO ai_user_plans VALUES ('hal', 'rearm'), ('ida', 'edit');
});
my $py = q{
import psycopg, sys
a = psycopg.connect(sys.argv[1])
b = psycopg.connect(sys.argv[1], autocommit=True)
a.execute("SELECT ai_record_usage('hal', 'gpt-4o', 0, 6000)")
b.execute("SELECT ai_record_usage('hal', 'gpt-4o', 0, 6000)")
a.rollback()
b.execute("SELECT ai_record_usage('hal', 'gpt-4o', 0, 10)")
};
system('python3', '-c', $py, $node->connstr('postgres')) == 0 or die 'the python sessions failed';
is($node->safe_psql('postgres',
		q{SELECT string_agg(threshold_percent || ':' || spend_cents, ' ') FROM ai_alerts WHERE user_id = 'hal'}),
	'50:6.01', 'a rolled-back firing re-arms the threshold for the next record');

# thresholds are remembered by percent: reordered mid-month, 50% does not
# fire twice and 80% still fires
$node->safe_psql('postgres', "SELECT ai_record_usage('ida', 'gpt-4o', 0, 6000)");
$node->safe_psql('postgres', "UPDATE ai_plans SET alert_percents = '{80,50}' WHERE plan = 'edit'");
@got = listen_and_run("SELECT ai_record_usage('ida', 'gpt-4o', 0, 1000);");
is(scalar(@got), 0, 'a threshold that fired before sends nothing after an edit');
@got = listen_and_run("SELECT ai_record_usage('ida', 'gpt-4o', 0, 2000);");
is(join(',', map { /"threshold_percent": (\d+)/; $1 } @got), '80', 'the other one fires when reached');
is($node->safe_psql('postgres',
		q{SELECT string_agg(threshold_percent::text, ',' ORDER BY threshold_percent) FROM ai_alerts WHERE user_id = 'ida'}),
	'50,80', 'one row per percent');

is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared state is consistent');
$node->stop;
done_testing();
