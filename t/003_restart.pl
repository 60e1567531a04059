# Counts survive a clean restart; after a crash, recorded usage and spend are
# all there and check counts older than ai_ratelimit.save_interval are kept.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use AiTest qw(answers_again);

my $node = PostgreSQL::Test::Cluster->new('restart');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'ai_ratelimit'");
$node->append_conf('postgresql.conf', "restart_after_crash = on");
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans (plan, burst_limit, burst_window, daily_limit, monthly_budget_cents) VALUES
    ('hourly', 10, '1 hour', 100, NULL),
    ('cap10',  NULL, '1 minute', NULL, 10),
    ('day100', NULL, '1 minute', 100, NULL);
CREATE FUNCTION checks(u text, p text, n int) RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FILTER (WHERE c.allowed)
    FROM generate_series(1, n) g, LATERAL ai_check_limit(u || repeat('', g), p) c $$;
});

sub sql { return $node->safe_psql('postgres', $_[0]); }

# before: 4 checks, 5 recorded calls, one open 6-cent reservation
is(sql("SELECT checks('alice', 'hourly', 4)"), '4', 'four checks allowed');
sql("SELECT ai_record_usage('alice', 'gpt-4o', 1000, 1000) FROM generate_series(1, 5)");
is(sql("SELECT reservation_id IS NOT NULL FROM ai_check_limit('bob', 'cap10', 6)"), 't',
	'a reservation is open');
my $spend = sql("SELECT ai_monthly_spend('alice')");
is($spend, '6.25', 'five calls of 1.25 cents recorded');

# clean restart
$node->restart;
is(sql("SELECT remaining FROM ai_peek_limit('alice', 'day100')"), '95',
	'clean restart: the daily count is kept (100 - 4 - 1)');
is(sql("SELECT checks('alice', 'hourly', 10)"), '6',
	'clean restart: the burst window is kept (6 of 10 places left in the hour)');
is(sql("SELECT allowed FROM ai_check_limit('bob', 'cap10', 5)"), 'f',
	'clean restart: the open reservation still holds 6 of 10 cents');
is(sql("SELECT ai_monthly_spend('alice')"), $spend, 'clean restart: spend kept');
like(slurp_file($node->logfile), qr/ai_ratelimit restored the counters of \d+ users and 1 reservations/,
	'the server log says what was restored');

# crash: counts older than the save interval (1 s) are kept
is(sql("SELECT checks('carol', 'hourly', 3)"), '3', 'carol: three checks');
sql("SELECT ai_record_usage('carol', 'claude-sonnet-4-6', 812, 1045)");
sleep(2);
$node->stop('immediate');
$node->start;
is(sql("SELECT remaining FROM ai_peek_limit('carol', 'hourly')"), '96',
	'crash: checks older than the save interval are kept');
is(sql("SELECT remaining FROM ai_peek_limit('alice', 'day100')"), '89',
	'crash: earlier counts are kept too');
is(sql("SELECT ai_monthly_spend('carol')"), '1.8111', 'crash: recorded usage is all there');
is(sql("SELECT count(*) FROM ai_usage"), '6', 'crash: every committed usage row is there');

# a crash of one process: the postmaster reinitializes shared memory and
# restores it from the last save
is(sql("SELECT checks('dave', 'hourly', 2)"), '2', 'dave: two checks');
sleep(2);
# the saver of this node only (another suite may run a node of the same name)
# (the postmaster stays the same across a crash restart)
my $postmaster = (split /\n/, slurp_file($node->data_dir . '/postmaster.pid'))[0];
my $saver = sub {
	my $p = `pgrep -P $postmaster -f '^postgres: restart: ai_ratelimit saver'`;
	chomp $p;
	return $p;
};
my $pid = $saver->();
ok($pid =~ /^\d+$/, "the saver runs as a background worker (pid $pid)");
kill 'KILL', $pid;
# wait for the crash restart to finish: a new saver and a server that answers
my $tries = 0;
while (($saver->() eq '' || $saver->() eq $pid) && $tries++ < 300) { select(undef, undef, undef, 0.1); }
answers_again($node) or die "no restart";
like(slurp_file($node->logfile), qr/terminated by signal 9/, 'the server went through a crash restart');
is(sql("SELECT remaining FROM ai_peek_limit('dave', 'hourly')"), '97',
	'crash restart in place: counts restored from the last save');

# a damaged file is ignored with a LOG message, never a failed start
$node->stop;
my $file = $node->data_dir . '/pg_stat/ai_ratelimit.dat';
ok(-f $file, 'the counters file exists after a clean stop');
open(my $fh, '+<', $file) or die;
binmode $fh;
seek($fh, 40, 0);
print $fh "garbage";
close $fh;
$node->start;
like(slurp_file($node->logfile), qr/ignoring damaged ai_ratelimit file/, 'a damaged file is ignored');
is(sql("SELECT remaining FROM ai_peek_limit('alice', 'day100')"), '99',
	'after a damaged file the counters start empty');
is(sql("SELECT ai_monthly_spend('alice')"), $spend, 'but spend comes from the tables');

is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared state is consistent: no leaked reservation or record in flight');
$node->stop;
done_testing();
