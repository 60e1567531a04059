# A record retried after a crash, before any check of its user: the first
# record committed, but the server went down before the end of its
# reservation reached the WAL (it is logged after the commit, and left to
# the WAL writer), so recovery restores the reservation as open.  The
# retry must find the first record's row and repeat its cost, not settle
# the reservation a second time.  The WAL writer is slowed so that the end
# is still unwritten when the server stops.
#
# Rounds 4 to 6 finish the crash as Patroni does before it starts a crashed
# leader again: crash recovery in single-user mode, which ends with a clean
# shutdown (and a save of the counters), then a normal start.  The
# reservation restored by that recovery must still be looked up in
# ai_usage after the clean start.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('record_after_crash');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'ai_ratelimit'
wal_writer_delay = 10s
wal_writer_flush_after = 0
ai_ratelimit.save_interval = 0
});
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents) VALUES ('rc', NULL, NULL, 100);
});

for my $round (1 .. 6)
{
	my $user = "rc-$round";
	my $rid = $node->safe_psql('postgres',
		"SELECT reservation_id FROM ai_check_limit('$user', 'rc', 10)");
	ok($rid, "round $round: a check reserved 10 cents");
	# the record commits (its commit is flushed); the reservation's end is not
	my $cost = $node->safe_psql('postgres',
		"SELECT ai_record_usage('$user', 'gpt-4o', 1000, 1000, 0, $rid)");
	is($cost, '1.25', "round $round: the record is acknowledged");
	$node->stop('immediate');
	if ($round > 3)
	{
		# postgres --single: crash recovery, then a shutdown checkpoint
		my ($in, $single_err) = ('', '');
		ok(IPC::Run::run([ 'postgres', '--single', '-D', $node->data_dir, 'postgres' ],
				'<', \$in, '>', '/dev/null', '2>', \$single_err),
			"round $round: crash recovery in single-user mode")
		  or diag($single_err);
		my $control = `pg_controldata -D @{[ $node->data_dir ]}`;
		like($control,
			qr/cluster state:\s+shut down\n/, "round $round: it shut down cleanly");
	}
	$node->start;
	# the application retries the record whose answer it did not trust
	my ($ret, $out, $err) = $node->psql('postgres',
		"SELECT ai_record_usage('$user', 'gpt-4o', 1000, 1000, 0, $rid)");
	is($out, '1.25', "round $round: the retry returns the first cost");
	is($node->safe_psql('postgres', "SELECT count(*) FROM ai_usage WHERE reservation_id = $rid"),
		'1', "round $round: one usage row for the reservation");
	is($node->safe_psql('postgres',
			"SELECT reserved_cents FROM ai_ratelimit_status WHERE user_id = '$user'") || '0',
		'0', "round $round: nothing is held for it");
	is($node->safe_psql('postgres', "SELECT ai_monthly_spend('$user')"), '1.25',
		"round $round: the month is charged once");
}
is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared state is consistent');
$node->stop;
done_testing();
