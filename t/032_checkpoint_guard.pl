# A crash replays the WAL from the last checkpoint on.  A hold logged just
# before a checkpoint, and not yet in the save files, was in neither: a
# CHECKPOINT right after a check, then a crash, handed the estimate back.
# The checkpoint guard (src/guard.c) holds each checkpoint until a save
# that began after its redo point has ended.  Here, with files and without
# (save_interval 0): hold 50 cents of a 100-cent budget, CHECKPOINT at
# once, stop with -m immediate; after the start, a 60-cent estimate must be
# refused.  Then what the guard must never do: hold a checkpoint for ever.
# Last, two crashes in a row: the end-of-recovery checkpoint.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use AiTest;

# the ai_ratelimit worker of a node named $name (it has no database, so pgrep)
sub worker_pid
{
	my ($node, $name) = @_;
	my $pm = (split /\n/, slurp_file($node->data_dir . '/postmaster.pid'))[0];
	my $p = `pgrep -P $pm -f '$name'`;
	chomp $p;
	return $p;
}

# In one session, a check holds 50 cents and a checkpoint follows at once;
# then a crash (-m immediate).  After the start, the hold must refuse a
# 60-cent estimate of the 100-cent budget.
sub held_through_crash
{
	my ($node, $user, $what) = @_;
	is($node->safe_psql('postgres', "SELECT allowed FROM ai_check_limit('$user', 'g', 50); CHECKPOINT;"),
		't', "$what: 50 cents held, then a checkpoint");
	$node->stop('immediate');
	$node->start;
	is(sql($node, "SELECT allowed FROM ai_check_limit('$user', 'g', 60)"), 'f',
		"$what: after the crash the hold refuses a 60-cent estimate");
}

for my $interval ('1s', '0')
{
	my $node = PostgreSQL::Test::Cluster->new("guard_$interval");
	$node->init(allows_streaming => 1);
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.save_interval = $interval
});
	$node->start;
	sql($node, q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents) VALUES ('g', NULL, 100, 100);
});
	ok($node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'ai_ratelimit checkpoint guard'"),
		"save_interval $interval: the guard runs");
	for my $round (1 .. 3)
	{
		held_through_crash($node, "u$round", "save_interval $interval, round $round");
		is(sql($node, "SELECT allowed FROM ai_check_limit('u$round', 'g', 40)"), 't',
			"save_interval $interval, round $round: and a 40-cent one fits");
	}
	is(sql($node, 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
		"save_interval $interval: counters and reservations consistent");

	if ($interval eq '1s')
	{
		# the saver stopped (not gone): a checkpoint is held at most 30 s
		my $saver = worker_pid($node, 'ai_ratelimit saver');
		ok($saver, "the saver runs ($saver)");
		my $log_at = -s $node->logfile;
		kill 'STOP', $saver;
		sql($node, "SELECT allowed FROM ai_check_limit('u9', 'g', 1)");
		my $t0 = time;
		sql($node, 'CHECKPOINT');
		my $took = time - $t0;
		kill 'CONT', $saver;
		ok($took >= 25, "with the saver stopped, the checkpoint was held ($took s)");
		like(slurp_file($node->logfile, $log_at),
			qr/let a checkpoint go on before its counters were saved/,
			'and then let go, with a warning');

		# the saver gone (it is started again 5 s later): the checkpoint
		# waits for it
		kill 'TERM', worker_pid($node, 'ai_ratelimit saver');
		ok($node->poll_query_until('postgres', 'SELECT saver_pid IS NULL FROM ai_ratelimit_saves()'),
			'the saver exited');
		held_through_crash($node, 'u11', 'the saver down (the checkpoint waits for it)');

		# the guard terminated: it comes back, and holds again
		my $guard = worker_pid($node, 'ai_ratelimit checkpoint guard');
		kill 'TERM', $guard;
		ok($node->poll_query_until('postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity
			 WHERE backend_type = 'ai_ratelimit checkpoint guard' AND pid <> $guard"),
			'a terminated guard is started again');
		held_through_crash($node, 'u10', 'the guard started again');
	}
	$node->stop;
}

# Crash recovery brings a hold back from the WAL; the end-of-recovery
# checkpoint then moves the redo point past its record.  With saves an hour
# apart, a second crash right after the start must still find it: the end
# of redo waits for a save (replica.c).
my $node = PostgreSQL::Test::Cluster->new('guard_recovery');
$node->init(allows_streaming => 1);
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.save_interval = '1h'
});
$node->start;
sql($node, q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents) VALUES ('g', NULL, 100, 100);
});
for my $round (1 .. 3)
{
	my $user = "r$round";
	is(sql($node, "SELECT allowed FROM ai_check_limit('$user', 'g', 50)"), 't',
		"round $round: 50 cents held (only the WAL has it)");
	$node->stop('immediate');
	$node->start;
	$node->stop('immediate');
	$node->start;
	is(sql($node, "SELECT allowed FROM ai_check_limit('$user', 'g', 60)"), 'f',
		"round $round: two crashes later the hold refuses a 60-cent estimate");
}
$node->stop;
done_testing();
