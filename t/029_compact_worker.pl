# The extension totals usage itself: with no job configured, its worker
# runs ai_compact_usage() in every database that checks or records, each
# ai_ratelimit.compact_interval.  Budget loads then read the closed days
# from the totals, and the money stays exact: applications check with an
# estimate, call, and record in a transaction of their own while the worker
# runs; the server crashes in the middle; after the restart every user's
# month, loaded from the totals and the log, is what the log says, and no
# cap was passed.  Also: compact_interval = 0 stops the worker, a second
# database is totalled too, and a database dropped or without the extension
# any more is left alone.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('compact_worker');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.compact_interval = 1s
ai_ratelimit.reservation_ttl = 10
max_connections = 30
});
$node->start;

# History: 4 users with 7 calls of 5 cents, one on each of the closed days
# 3 to 9 days ago (in the previous month too, on the first days of a
# month), written by a backfill, not by ai_record_usage; and one call of
# user late.  Each user's
# monthly budget is its history of this month plus 5 cents.
my $users = 4;
$node->safe_psql('postgres', qq{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok) VALUES ('cw-model', 10, 10);
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('cw', NULL, NULL);
INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
                      cached_input_tokens, cost_cents)
SELECT t, (t AT TIME ZONE 'UTC')::date, 'live-' || u, 'cw-model', 'cw-model', 1000, 1000, 0, 5
FROM generate_series(1, $users) u, generate_series(3, 9) d,
     LATERAL (SELECT date_trunc('day', now()) - d * interval '1 day' + interval '12 hours' AS t) x
UNION ALL
SELECT t, (t AT TIME ZONE 'UTC')::date, 'late', 'cw-model', 'cw-model', 1, 1, 0, 0.5
FROM (SELECT date_trunc('day', now()) - interval '3 days' AS t) x;
INSERT INTO ai_user_limits (user_id, monthly_budget_cents)
SELECT 'live-' || u, 5 + (SELECT coalesce(sum(cost_cents), 0) FROM ai_usage
                           WHERE user_id = 'live-' || u AND day >= date_trunc('month', now())::date)
FROM generate_series(1, $users) u;
});
my %cap = map { split /\|/ } split /\n/,
  $node->safe_psql('postgres', 'SELECT user_id, monthly_budget_cents FROM ai_user_limits');

# nothing totals usage until a session of the database checks or records
sleep 2;
is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_usage_days'), '0',
	'no database is totalled before one of its sessions checks');
$node->safe_psql('postgres', "SELECT allowed FROM ai_check_limit('live-1', 'cw')");
ok($node->poll_query_until('postgres',
		"SELECT count(DISTINCT (user_id, day)) = $users * 7 + 1 FROM ai_usage_days WHERE upto IS NULL"),
	'the worker totalled every closed day of every user, with no job configured');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM ai_usage_days d
	WHERE d.cost_cents <> (SELECT sum(cost_cents) FROM ai_usage u
	                        WHERE u.user_id = d.user_id AND u.day = d.day AND u.model = d.model)
	   OR d.calls <> 1}),
	'0', 'each total is its day\'s rows');

# A row backfilled into a totalled day of user late after the worker's run
# is counted too (the day reads from the log until it is totalled again).
$node->safe_psql('postgres', q{
INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
                      cached_input_tokens, cost_cents)
SELECT t, (t AT TIME ZONE 'UTC')::date, 'late', 'cw-model', 'cw-model', 1, 1, 0, 0.25
FROM (SELECT date_trunc('day', now()) - interval '3 days' + interval '1 hour' AS t) x;
});

# Applications: check with an estimate, call, record in a transaction of
# their own, until the budgets refuse; the server crashes under them.
my $script = "$PostgreSQL::Test::Utils::tmp_check/cw_app.sql";
PostgreSQL::Test::Utils::append_to_file($script, q{
\set u random(1, 4)
SELECT allowed::int AS ok, coalesce(reservation_id, 0) AS rid
  FROM ai_check_limit('live-' || :u, 'cw', 0.5) \gset
\if :ok
\sleep 20 ms
SELECT ai_record_usage('live-' || :u, 'cw-model', 100, 100, 0, :rid);
\endif
});
my ($out, $err) = ('', '');
my $bench = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '6', '-j', '2', '-T', '30', '-f', $script,
	  '-h', $node->host, '-p', $node->port, 'postgres' ],
	'>', \$out, '2>', \$err);
# until the budgets are nearly spent (each call costs 0.2 cents of 5)
$node->poll_query_until('postgres', qq{
	SELECT count(*) >= $users * 20 FROM ai_usage WHERE day = (now() AT TIME ZONE 'UTC')::date})
  or diag("pgbench: $err");
$node->stop('immediate');
$bench->finish;
$node->start;

# what the log holds of a user's month
sub month_logged
{
	my ($user) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT coalesce(sum(cost_cents), 0) FROM ai_usage
		WHERE user_id = '$user' AND day >= date_trunc('month', now())::date});
}

for my $u (1 .. $users)
{
	my $user = "live-$u";
	my $logged = month_logged($user);
	# the first check after the crash loads the month from totals and log
	$node->safe_psql('postgres', "SELECT allowed FROM ai_check_limit('$user', 'cw')");
	is($node->safe_psql('postgres', "SELECT ai_monthly_spend('$user') = $logged"), 't',
		"$user: after the crash, the month's spend is the log's ($logged cents)");
	ok($logged <= $cap{$user}, "$user: the budget of $cap{$user} cents was not passed");
}
# the backfilled row is counted
is($node->safe_psql('postgres', "SELECT ai_monthly_spend('late') = " . month_logged('late')),
	't', 'a row backfilled into a totalled day counts');

# the budgets bind: the load goes on until they refuse, once the estimates
# of the calls the crash cut off have expired
sleep 11;
$bench = IPC::Run::start(
	[ 'pgbench', '-n', '-c', '4', '-j', '2', '-t', '60', '-f', $script,
	  '-h', $node->host, '-p', $node->port, 'postgres' ],
	'>', \$out, '2>', \$err);
$bench->finish;
for my $u (1 .. $users)
{
	my $user = "live-$u";
	my $logged = month_logged($user);
	ok($logged <= $cap{$user} && $logged > $cap{$user} - 0.5,
		"$user: spent $logged of $cap{$user} cents: the budget was reached, not passed");
	is($node->safe_psql('postgres', "SELECT ai_monthly_spend('$user') = $logged"), 't',
		"$user: the counted spend is the log's");
}

# compact_interval = 0: the worker stops; set again, it totals what came
$node->safe_psql('postgres', q{
ALTER SYSTEM SET ai_ratelimit.compact_interval = 0;
SELECT pg_reload_conf();
});
sleep 2;
$node->safe_psql('postgres', q{
INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
                      cached_input_tokens, cost_cents)
SELECT t, (t AT TIME ZONE 'UTC')::date, 'off', 'cw-model', 'cw-model', 1, 1, 0, 1
FROM (SELECT date_trunc('day', now()) - interval '5 days' AS t) x;
});
sleep 3;
is($node->safe_psql('postgres', "SELECT count(*) FROM ai_usage_days WHERE user_id = 'off'"), '0',
	'with compact_interval = 0 the worker does not run');
$node->safe_psql('postgres', q{
ALTER SYSTEM SET ai_ratelimit.compact_interval = '1s';
SELECT pg_reload_conf();
});
ok($node->poll_query_until('postgres', "SELECT count(*) = 1 FROM ai_usage_days WHERE user_id = 'off'"),
	'set again, it totals what came meanwhile');

# a second database is totalled too; one that drops the extension, or is
# dropped, is left alone after at most a few failed visits
for my $db ('db2', 'db3')
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, q{
	CREATE EXTENSION ai_ratelimit;
	INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
	                      cached_input_tokens, cost_cents)
	SELECT t, (t AT TIME ZONE 'UTC')::date, 'other', 'gpt-4o', 'gpt-4o', 1, 1, 0, 1
	FROM (SELECT date_trunc('day', now()) - interval '4 days' AS t) x;
	SELECT allowed FROM ai_check_limit('other');
	});
	ok($node->poll_query_until($db, "SELECT count(*) = 1 FROM ai_usage_days WHERE user_id = 'other'"),
		"$db: its usage is totalled");
}
my $db3_oid = $node->safe_psql('postgres', "SELECT oid FROM pg_database WHERE datname = 'db3'");
my $log_at = -s $node->logfile;
$node->safe_psql('db2', 'DROP EXTENSION ai_ratelimit');
$node->safe_psql('postgres', 'DROP DATABASE db3 WITH (FORCE)');
sleep 6;
my $log = substr(PostgreSQL::Test::Utils::slurp_file($node->logfile), $log_at);
my $db3_failures = () = $log =~ /database $db3_oid does not exist/g;
ok($db3_failures <= 3, "a dropped database is visited at most 3 times more ($db3_failures)");
unlike($log, qr/ERROR:/, 'a database without the extension is not compacted (no error)');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared state is consistent');
$node->stop;
done_testing();
