# Saves write what changed: a base now and then, and delta blocks of the
# entries changed since (and tombstones of removed ones).  A crash restart
# reads the base and every complete delta; a reset saved in a delta stays
# reset; reservations come back under their own ids, so the application
# settles them as before, after a crash restart and after a clean restart.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use AiTest qw(answers_again);
use Time::HiRes qw(sleep);

my $node = PostgreSQL::Test::Cluster->new('saves');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.save_interval = '200ms'
restart_after_crash = on
ai_ratelimit.timezone = 'UTC'
});
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }
my $dat = $node->data_dir . '/pg_stat/ai_ratelimit.dat';
my $delta = $node->data_dir . '/pg_stat/ai_ratelimit.delta';

sql(q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans VALUES ('day', NULL, '1 minute', 100, 1000);
});

# many users (the first save after a start is a base), then small changes:
# the deltas grow by what changed, not by what is tracked
sql(q{SELECT count(*) FROM generate_series(1, 2000) g, LATERAL ai_check_limit('bulk' || g, 'day')});
sql(q{SELECT count(*) FROM generate_series(1, 5) g, LATERAL ai_check_limit(CASE WHEN g > 0 THEN 'carol' END, 'day')});
sleep(1);						# the saves of those settle
ok(-s $dat > 0, 'a base was written');
my $d0 = -s $delta // 0;
my $r1 = sql("SELECT reservation_id FROM ai_check_limit('alice', 'day', 5)");
like($r1, qr/^\d+$/, "alice holds reservation $r1");
sql(q{SELECT count(*) FROM generate_series(1, 3) g, LATERAL ai_check_limit(CASE WHEN g > 0 THEN 'bob' END, 'day')});
sql("SELECT ai_reset_limits('carol')");
my $t0 = time;
sleep(0.2) while (-s $delta // 0) <= $d0 && time - $t0 < 60;
sleep(1);
my $grew = (-s $delta // 0) - $d0;
cmp_ok($grew, '>', 0, 'the changes were saved as a delta');
cmp_ok($grew, '<', 2000 * 176 / 10, "the delta grew by $grew bytes: what changed, not the 2,000 users");

# crash restart in place: kill the saver, as a crash of any process would
my $pm = (split /\n/, slurp_file($node->data_dir . '/postmaster.pid'))[0];
my $victim = `pgrep -P $pm -f 'ai_ratelimit saver'`;
chomp $victim;
like($victim, qr/^\d+$/, 'the saver runs');
kill 'KILL', $victim;
answers_again($node) or die "no restart";
like(slurp_file($node->logfile), qr/restored the counters of \d+ users and \d+ reservations/,
	'the crash restart restored from the files');
like(slurp_file($node->logfile), qr/From the saved counters and [1-9]\d* later changes/,
	'delta blocks were applied');
is(sql("SELECT remaining FROM ai_peek_limit('bob', 'day')"), '96', 'bob: 3 checks, from a delta');
is(sql("SELECT remaining FROM ai_peek_limit('carol', 'day')"), '99', 'carol: the reset, from a delta, stays');
is(sql("SELECT count(*) FROM generate_series(1, 2000) g, LATERAL ai_peek_limit('bulk' || g, 'day') p
	WHERE p.remaining = 98"), '2000', 'the 2,000 users of the base');

# the reservation kept its id: settling it works, with no warning
my ($ret, $out, $err) = $node->psql('postgres',
	"SELECT ai_record_usage('alice', 'gpt-4o', 1000, 1000, 0, $r1)");
is($out, '1.25', 'after a crash restart, the reservation settles by its id');
unlike($err, qr/is not open/, 'no "not open" warning');
is(sql("SELECT open_reservations FROM ai_ratelimit_capacity()"), '0', 'and it is no longer open');

# a clean restart: a reservation made before it settles after it
my $r2 = sql("SELECT reservation_id FROM ai_check_limit('dora', 'day', 7)");
$node->restart;
($ret, $out, $err) = $node->psql('postgres',
	"SELECT ai_record_usage('dora', 'gpt-4o', 1000, 1000, 0, $r2)");
is($out, '1.25', 'after a clean restart, the reservation settles by its id');
unlike($err, qr/is not open/, 'no "not open" warning');
my $r3 = sql("SELECT reservation_id FROM ai_check_limit('erin', 'day', 1)");
cmp_ok($r3, '>', $r2, 'new reservation ids continue after the restored ones');
is(sql('SELECT count(*) FROM ai_ratelimit_verify()'), '0', 'the shared state is consistent');
$node->stop;
done_testing();
