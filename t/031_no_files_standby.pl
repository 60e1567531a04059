# With ai_ratelimit.save_interval = 0 the saver writes no files, only the
# WAL: a standby made from a base backup, and a crash recovery, replay it
# only from a checkpoint on, and must find every counter there.  The saver
# logs every counter once after each checkpoint.  Here the counts and a
# hold are made before the backup's checkpoint; after a failover to its
# standby they must all still count.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use AiTest;

my $primary = PostgreSQL::Test::Cluster->new('nofiles_primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', q{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.save_interval = 0
});
$primary->start;
sql($primary, q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents) VALUES ('n', NULL, 5, 100);
});
is(sql($primary, q{SELECT allowed FROM ai_check_limit('ann', 'n')}), 't', "ann's check $_ of the day")
	for 1 .. 3;
my $rid = sql($primary, q{SELECT reservation_id FROM ai_check_limit('ann', 'n', 50)});
like($rid, qr/^\d+$/, "ann's fourth check holds 50 cents ($rid)");
# the saver has logged these (every second) before the checkpoint
sleep 3;
sql($primary, 'CHECKPOINT');
ok(!-e $primary->data_dir . '/pg_stat/ai_ratelimit.dat', 'save_interval 0: no save file');

my $t = sql($primary, 'SELECT clock_timestamp()');
$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('nofiles_standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->start;
# nothing changed since: only the save after the backup's checkpoint logs
# (the checkpoint waited for it: src/guard.c)
ok($primary->poll_query_until('postgres', "SELECT last_wal > '$t' FROM ai_ratelimit_saves()"),
	'the saver logs every counter after the checkpoint');
$primary->wait_for_catchup($standby);

$primary->stop('immediate');
$standby->promote;
is(sql($standby, q{SELECT remaining FROM ai_peek_limit('ann', 'n')}), '0',
	'after a failover: four of five counted, the peeked one would be the last');
is(sql($standby, q{SELECT allowed FROM ai_check_limit('ann', 'n', 60)}), 'f',
	'after a failover: the 50 cents held refuse a 60-cent estimate (budget 100)');
is(sql($standby, q{SELECT allowed FROM ai_check_limit('ann', 'n', 40)}), 't',
	'and a 40-cent one fits');
is(sql($standby, 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the counters and reservations of the new primary are consistent');
done_testing();
