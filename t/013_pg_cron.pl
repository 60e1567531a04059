# The README's pg_cron recipe, as written: pg_cron preloaded beside
# ai_ratelimit, jobs run as background workers (no password), its metadata
# in the postgres database, and ai_purge_usage scheduled into the database
# where ai_ratelimit lives with cron.schedule_in_database, and so is
# ai_compact_usage.  The jobs run and succeed: the old usage rows move into
# the archive, a closed day gets its totals, and the month's spend stays
# exact.  Needs Debian's postgresql-NN-cron (scripts/test.sh
# installs it; the Debian roots of 17 and 18 have it).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('cron');
my $pkglib = $node->config_data('--pkglibdir');
# missing pg_cron fails the run: a suite that skips it would pass untested
BAIL_OUT("pg_cron is not installed for this PostgreSQL ($pkglib): install postgresql-NN-cron (scripts/test.sh does)")
  unless -f "$pkglib/pg_cron.so";

$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit,pg_cron'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 20
ai_ratelimit.timezone = 'UTC'
});
$node->start;

$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('app', q{
CREATE EXTENSION ai_ratelimit;
-- 100 days ago, 10 days ago and today: one old row to purge, one to total, one to keep
INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
                      cached_input_tokens, cost_cents)
VALUES (now() - interval '100 days', (now() - interval '100 days')::date, 'cron-1', 'gpt-4o',
        'gpt-4o', 1000, 1000, 0, 1.25),
       (now() - interval '10 days', (now() - interval '10 days')::date, 'cron-2', 'gpt-4o',
        'gpt-4o', 1000, 1000, 0, 2.5);
SELECT ai_record_usage('cron-1', 'gpt-4o', 1000, 1000);
});
my $spend = $node->safe_psql('app', "SELECT ai_monthly_spend('cron-1')");
my $old_spend = $node->safe_psql('app',
	"SELECT ai_monthly_spend('cron-1', (now() - interval '100 days')::date)");
is($old_spend, '1.25', 'the old month has its spend');

$node->safe_psql('postgres', q{
CREATE EXTENSION pg_cron;
SELECT cron.schedule_in_database('ai-purge-usage', '* * * * *',
                                 $$SELECT ai_purge_usage('90 days')$$, 'app');
SELECT cron.schedule_in_database('ai-compact-usage', '* * * * *',
                                 $$SELECT ai_compact_usage()$$, 'app');
});
# pg_cron 1.4 schedules by the minute: the jobs run at the next minute
ok($node->poll_query_until('postgres',
		q{SELECT count(DISTINCT jobid) = 2 FROM cron.job_run_details WHERE status IN ('succeeded', 'failed')}),
	'the jobs ran within a minute or two');
is($node->safe_psql('postgres', q{SELECT string_agg(j.jobname || ' ' || d.status || ' ' || coalesce(d.return_message, ''), ', ' ORDER BY j.jobname)
	FROM cron.job j JOIN LATERAL (SELECT * FROM cron.job_run_details r WHERE r.jobid = j.jobid
	                               ORDER BY runid LIMIT 1) d ON true}),
	'ai-compact-usage succeeded SELECT 1, ai-purge-usage succeeded SELECT 1',
	'they succeeded in the app database');
is($node->safe_psql('app', "SELECT count(*) FROM ai_usage WHERE user_id = 'cron-1'"), '1',
	'the old row left ai_usage');
is($node->safe_psql('app', "SELECT user_id || ' ' || calls || ' ' || cost_cents FROM ai_usage_days"),
	'cron-2 1 2.5', 'the closed day has its totals');
is($node->safe_psql('app', "SELECT ai_monthly_spend('cron-2', (now() - interval '10 days')::date)"),
	'2.5', 'and its month\'s spend is the same from them');
is($node->safe_psql('app', "SELECT calls || ' ' || cost_cents FROM ai_usage_archive"), '1 1.25',
	'... into the per-day totals');
is($node->safe_psql('app', "SELECT ai_monthly_spend('cron-1')"), $spend,
	"this month's spend is unchanged ($spend)");
is($node->safe_psql('app', "SELECT ai_monthly_spend('cron-1', (now() - interval '100 days')::date)"),
	'1.25', 'and the old month\'s spend is read from the archive');
$node->stop;
done_testing();
