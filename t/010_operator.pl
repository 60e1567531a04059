# What an operator does, and what the counters and money do then: each stop
# mode, a crash after a settled reservation, saves that fail, DROP EXTENSION
# and CREATE EXTENSION, usage rows written by hand or COPY, and user ids cut
# for the status view.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use AiTest qw(answers_again);
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('operator');
$node->init;
# no periodic saves: only a clean shutdown saves, so each stop mode shows
# exactly what it keeps
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.save_interval = '1h'
restart_after_crash = on
ai_ratelimit.timezone = 'UTC'
});
$node->start;

sub sql { return $node->safe_psql($_[1] // 'postgres', $_[0]); }
sub used { return 100 - 1 - sql("SELECT remaining FROM ai_peek_limit('$_[0]', 'day')"); }
# the saver of this node (it has no database connection, so pgrep)
sub saver_pid
{
	my $pm = (split /\n/, slurp_file($node->data_dir . '/postmaster.pid'))[0];
	my $p = `pgrep -P $pm -f 'ai_ratelimit saver'`;
	chomp $p;
	return $p;
}

sql(q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans VALUES ('day', NULL, '1 minute', 100, 150);
CREATE FUNCTION checks(u text, n int, est numeric DEFAULT 0) RETURNS bigint LANGUAGE plpgsql AS
  $$ DECLARE k bigint := 0; BEGIN
       FOR i IN 1..n LOOP
         k := k + (SELECT count(*) FROM ai_check_limit(u, 'day', est) WHERE allowed);
       END LOOP;
       RETURN k;
     END $$;
});

# a session that checks inside a transaction it never commits
sub open_check
{
	my ($user) = @_;
	my ($in, $out, $err) = ("BEGIN;\nSELECT allowed FROM ai_check_limit('$user', 'day', 5);\n", '', '');
	my $h = IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-f', '-' ],
		'<', \$in, '>', \$out, '2>', \$err);
	my $t = time;
	IPC::Run::pump($h) until $out =~ /^t$/m || time - $t > 60;
	is($out, "t\n", "$user: a check in a transaction that stays open");
	return $h;
}

# ---- stop modes ----
sql("SELECT checks('smart', 3)");
$node->stop('smart');
$node->start;
is(used('smart'), 3, 'smart stop: every committed count is kept');

sql("SELECT checks('fast', 4)");
$node->stop('fast');
$node->start;
is(used('fast'), 4, 'fast stop: every committed count is kept');

# immediate: like a crash; back to the last save (the fast stop above)
sql("SELECT checks('fast', 2)");
my $h = open_check('open1');
$node->stop('immediate');
$h->kill_kill;
$node->start;
is(used('fast'), 4, 'immediate stop: counts after the last save are lost, as after a crash');
is(used('open1'), 0, 'immediate stop: a check whose transaction never committed does not come back');
is(sql("SELECT open_reservations FROM ai_ratelimit_capacity()"), '0', 'nor does its reservation');
unlike(slurp_file($node->logfile), qr/ai_ratelimit restored counters saved at/,
	'no warning: the last save was the clean shutdown before');

# a killed backend: crash restart in place, back to the last save
sql("SELECT checks('killed', 5)");
$node->restart;					# saves: killed = 5
sql("SELECT checks('killed', 1)");
$h = open_check('open2');
my $victim = sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND query LIKE '%open2%' AND pid <> pg_backend_pid()});
kill 'KILL', $victim;
$h->kill_kill;
answers_again($node) or die "no restart";
like(slurp_file($node->logfile), qr/terminated by signal 9/, 'a killed backend: crash restart');
is(used('killed'), 5, 'a killed backend: back to the last save');
is(used('open2'), 0, 'an uncommitted check does not come back');

# a killed postmaster: the next start is a crash recovery, back to the last save
sql("SELECT checks('killed', 2)");
$node->kill9;
# its children notice and exit; wait for the data directory to be free
my $tries = 0;
sleep(1) while `pgrep -f "postgres: operator: "` ne '' && $tries++ < 60;
$node->start;
is(used('killed'), 5, 'a killed postmaster: back to the last save');

# ---- a reservation settled after the last save does not come back after a crash ----
my $resv = sql("SELECT reservation_id FROM ai_check_limit('ghost', 'day', 100)");
$node->restart;					# saves the open reservation
is(sql("SELECT ai_record_usage('ghost', 'gpt-4o', 0, 100000, 0, $resv)"), '100',
	'the reservation is settled by a 100-cent call');
kill 'KILL', saver_pid();
answers_again($node) or die "no restart";
is(sql("SELECT allowed FROM ai_check_limit('ghost', 'day', 10)"), 't',
	'after the crash, 100 spent + 10 fits the 150 budget: the settled reservation is not held again');
is(sql("SELECT count(*) FROM ai_ratelimit_status WHERE user_id = 'ghost' AND open_reservations = 1"), '1',
	'only the new reservation is open');

# ---- failed saves are warned about and visible ----
my $pg_stat = $node->data_dir . '/pg_stat';
my $delta = "$pg_stat/ai_ratelimit.delta";
sql("ALTER SYSTEM SET ai_ratelimit.save_interval = '200ms'");
sql('SELECT pg_reload_conf()');
# no new file in pg_stat, and no append to the deltas: every save fails
# (a saver that wrote its base before this only appends deltas)
chmod 0500, $pg_stat;
chmod 0400, $delta if -e $delta;
sql("SELECT checks('lost', 3)");
$node->poll_query_until('postgres', 'SELECT save_failures > 0 FROM ai_ratelimit_saves()')
  or die "no failed save was counted";
like(slurp_file($node->logfile), qr/WARNING:  ai_ratelimit could not save its counters/,
	'a failed save is a WARNING in the log');
my $last = sql('SELECT last_save FROM ai_ratelimit_saves()');
# the shutdown save fails too: the next start says so
$node->stop('fast');
chmod 0700, $pg_stat;
chmod 0600, $delta if -e $delta;
$node->start;
like(slurp_file($node->logfile), qr/WARNING:  ai_ratelimit restored counters saved at .*, not at the last shutdown/,
	'after a clean stop whose save failed, the start warns that counts were lost');
is(sql('SELECT save_failures FROM ai_ratelimit_saves()'), '1', 'and ai_ratelimit_saves() shows it');
sql("SELECT checks('lost', 1)");
$node->poll_query_until('postgres', "SELECT last_save > '$last' FROM ai_ratelimit_saves()")
  or die "saving did not resume";
pass('saving resumes once the directory is writable again');

# ---- DROP EXTENSION forgets this database's counters; other databases keep theirs ----
sql('CREATE DATABASE other');
sql(q{CREATE EXTENSION ai_ratelimit; INSERT INTO ai_plans VALUES ('day', NULL, '1 minute', 100, 10)}, 'other');
sql(q{SELECT count(*) FROM generate_series(1, 3) g, LATERAL ai_check_limit(CASE WHEN g > 0 THEN 'shared-id' END, 'day')}, 'other');
sql(q{UPDATE ai_plans SET monthly_budget_cents = 10 WHERE plan = 'day'});
sql(q{SELECT ai_record_usage('dropme', 'gpt-4o', 0, 16000)});	# 16 cents
sql(q{SELECT checks('dropme', 4); SELECT checks('shared-id', 2)});
is(sql("SELECT allowed FROM ai_check_limit('dropme', 'day')"), 'f', 'over the 10-cent budget before the drop');
sql('DROP EXTENSION ai_ratelimit');
sql(q{CREATE EXTENSION ai_ratelimit; INSERT INTO ai_plans VALUES ('day', NULL, '1 minute', 100, 10)});
is(sql("SELECT remaining FROM ai_peek_limit('dropme', 'day')"), '99', 'after DROP and CREATE EXTENSION: no count');
is(sql("SELECT allowed FROM ai_check_limit('dropme', 'day', 5)"), 't', 'and no cached spend: the budget is open');
is(sql("SELECT remaining FROM ai_peek_limit('shared-id', 'day')", 'other'), '96',
	'the other database keeps its counts');
is(sql('SELECT count(*) FROM ai_ratelimit_verify()'), '0', 'the shared state is consistent');

# ---- usage rows that ai_record_usage did not write count at the next check ----
is(sql("SELECT allowed FROM ai_check_limit('byhand', 'day', 1)"), 't', 'byhand: under the budget, spend cached');
sql(q{INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
	cached_input_tokens, cost_cents) VALUES (now(), current_date, 'byhand', 'gpt-4o', 'gpt-4o', 0, 0, 0, 12)});
is(sql("SELECT limited_by FROM ai_check_limit('byhand', 'day', 1)"), 'monthly_budget',
	'a row inserted by hand counts at the next check');
is(sql("SELECT allowed FROM ai_check_limit('bycopy', 'day', 1)"), 't', 'bycopy: under the budget, spend cached');
my $today = sql('SELECT current_date');
$node->safe_psql('postgres', qq{COPY ai_usage (created_at, day, user_id, model, priced_as, input_tokens,
	output_tokens, cached_input_tokens, cost_cents) FROM STDIN WITH (FORMAT csv);
$today 00:00:00+00,$today,bycopy,gpt-4o,gpt-4o,0,0,0,11
\\.
});
is(sql("SELECT limited_by FROM ai_check_limit('bycopy', 'day', 1)"), 'monthly_budget',
	'a row loaded by COPY counts at the next check');
sql(q{DELETE FROM ai_usage WHERE user_id IN ('byhand', 'bycopy')});
is(sql("SELECT allowed FROM ai_check_limit('byhand', 'day', 1)"), 't', 'and deleting it gives the budget back');

# ---- the status view cuts ids at a character boundary ----
sql(q{SELECT checks('ab€€€€€€€€€€€€€', 1)});	# 2 + 13 * 3 = 41 bytes
is(sql(q{SELECT user_id FROM ai_ratelimit_status WHERE user_id LIKE 'ab%'}), 'ab€€€€€€€€€€€€…',
	'a 41-byte id is shown as its first 38 bytes (whole characters) and an ellipsis');
is(sql(q{SELECT count(*) FROM ai_ratelimit_status WHERE convert_from(convert_to(user_id, 'UTF8'), 'UTF8') IS NULL}), '0',
	'every id in the view is valid text');

$node->stop;
done_testing();
