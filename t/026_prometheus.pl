# Metrics for Prometheus: Debian's prometheus-postgres-exporter runs the
# queries of monitoring/postgres_exporter_queries.yaml against a server, as
# a monitoring role granted what the README says, and its /metrics shows
# checks by outcome and level, the capacity, the saver's heartbeat, each
# account's spend against its caps and the budget alerts.  Every metric
# that monitoring/grafana-dashboard.json draws is among them.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use JSON::PP;
use IPC::Run;
use Time::HiRes qw(sleep);

my $exporter = '/usr/bin/prometheus-postgres-exporter';
BAIL_OUT("$exporter is not installed (Debian: apt-get install prometheus-postgres-exporter; scripts/test.sh does)")
  unless -x $exporter;

my $node = PostgreSQL::Test::Cluster->new('prometheus');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.save_interval = 1
});
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION ai_ratelimit;
CREATE ROLE ai_monitor LOGIN;
GRANT pg_monitor TO ai_monitor;
GRANT SELECT ON ai_ratelimit_stats, ai_account_caps, ai_alerts, ai_account_alerts TO ai_monitor;
GRANT EXECUTE ON FUNCTION ai_ratelimit_stats(), ai_account_limits(text),
    ai_ratelimit_capacity(), ai_ratelimit_saves() TO ai_monitor;
INSERT INTO ai_accounts (account_id, parent_id, alert_percents) VALUES ('acme', NULL, '{50}');
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES ('acme', 'ann', true);
INSERT INTO ai_rules (scope, scope_id, metric, "window", max_value) VALUES ('account', 'acme', 'cents', 'month', 10);
SELECT ai_record_usage('ann', 'gpt-4o', 0, 6000);
SELECT allowed FROM ai_check_limit('ann', 'pro', 5);
DO $$ BEGIN FOR i IN 1 .. 7 LOOP PERFORM * FROM ai_check_limit('bob', 'free'); END LOOP; END $$;
});

# the record fired the account's 50% alert, the refusal its exhausted one
$node->poll_query_until('postgres', 'SELECT count(*) = 2 FROM ai_account_alerts')
  or die 'the exhausted alert was not written';

my $port = PostgreSQL::Test::Cluster::get_free_port();
my $dsn = sprintf('host=%s port=%d dbname=postgres user=ai_monitor sslmode=disable',
	$node->host, $node->port);
local $ENV{DATA_SOURCE_NAME} = $dsn;
my ($out, $err) = ('', '');
my $h = IPC::Run::start(
	[ $exporter, '--extend.query-path=monitoring/postgres_exporter_queries.yaml',
	  "--web.listen-address=127.0.0.1:$port", '--disable-settings-metrics' ],
	'>', \$out, '2>', \$err);

my $metrics = '';
for (1 .. 100)
{
	my $r = HTTP::Tiny->new(timeout => 5)->get("http://127.0.0.1:$port/metrics");
	if ($r->{success} && $r->{content} =~ /^ai_ratelimit_account_cap_used/m)
	{
		$metrics = $r->{content};
		last;
	}
	sleep(0.3);
}
$h->kill_kill;
diag("exporter said: $err") unless $metrics;

like($metrics, qr/^ai_ratelimit_checks_total\{outcome="allowed",plan="free"[^}]*\} 5$/m,
	'checks by plan and outcome: 5 allowed');
like($metrics, qr/^ai_ratelimit_checks_total\{outcome="burst",plan="free"[^}]*\} 2$/m,
	'and 2 refused by the burst limit');
like($metrics, qr/^ai_ratelimit_checks_total\{outcome="account",plan="pro"[^}]*\} 1$/m,
	'a refusal by an account rule is counted as "account"');
like($metrics, qr/^ai_ratelimit_account_cap_used\{account_id="acme",[^}]*metric="cents"[^}]*\} 6$/m,
	'the account has used 6 cents of its cap');
like($metrics, qr/^ai_ratelimit_account_cap_used_percent\{account_id="acme",[^}]*\} 60$/m,
	'60 percent');
like($metrics, qr/^ai_ratelimit_account_cap_max_value\{account_id="acme",[^}]*\} 10$/m, 'of 10');
like($metrics, qr/^ai_ratelimit_alerts_open\{[^}]*level="account"[^}]*\} 2$/m,
	'the 50% and the exhausted alerts of the account are open');
like($metrics, qr/^ai_ratelimit_alerts_exhausted\{[^}]*level="account"[^}]*\} 1$/m,
	'one account budget is spent');
like($metrics, qr/^ai_ratelimit_capacity_tracked_keys\{[^}]*\} [1-9]/m, 'counters in use');
like($metrics, qr/^ai_ratelimit_saver_running\{[^}]*\} 1$/m, 'the saver runs');
my ($since) = $metrics =~ /^ai_ratelimit_saver_seconds_since_save\{[^}]*\} (\S+)$/m;
ok(defined $since && $since >= 0 && $since < 5,
	'an idle server saved (or knew its save current) within seconds: ' . ($since // 'none'));

# every metric the dashboard draws is exported
open(my $fh, '<', 'monitoring/grafana-dashboard.json') or die $!;
my $dash = decode_json(do { local $/; <$fh> });
close($fh);
my %drawn;
for my $p (@{ $dash->{panels} })
{
	for my $t (@{ $p->{targets} })
	{
		$drawn{$_} = 1 for $t->{expr} =~ /\b(ai_ratelimit_[a-z_]+)/g;
	}
}
cmp_ok(scalar(keys %drawn), '>=', 8, 'the dashboard draws the metrics');
my @missing = grep { $metrics !~ /^\Q$_\E[{ ]/m } sort keys %drawn;
is(join(', ', @missing), '', 'every metric of the dashboard is exported');

$node->stop;
done_testing();
