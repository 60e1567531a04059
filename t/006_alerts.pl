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
like($got[0], qr/^\{"event": "budget_alert", "user_id": "ann", "plan": "alerting", "threshold_percent": 50, "spend_cents": 5, "budget_cents": 10, "month": "\d{4}-\d\d"\}$/,
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

is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared state is consistent');
$node->stop;
done_testing();
