# A reservation that a record settled, but whose end a crash lost, must
# not stay held on a standby either.  The record commits (its commit is
# flushed); the end of its reservation is logged after the commit and left
# to the WAL writer, which is slowed, so the crash loses it on the primary
# and the standby never receives it.  After the restart, the user's next
# check finds the usage row and drops the reservation on the primary; that
# drop must reach the standby through the WAL, since the saver (one save an
# hour here) sends nothing in the meantime.  After a failover, the
# organisation the reservation was held on holds nothing of it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use AiTest;

my $primary = PostgreSQL::Test::Cluster->new('settled_primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', q{
shared_preload_libraries = 'ai_ratelimit'
wal_writer_delay = 10s
wal_writer_flush_after = 0
ai_ratelimit.save_interval = '1h'
});
$primary->start;
sql($primary, q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('s', NULL, NULL);
INSERT INTO ai_accounts (account_id, parent_id) VALUES ('org', NULL);
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES ('org', 'eve', true);
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value) VALUES
    (1, 'account', 'org', 'cents', 'month', 20);
});
$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('settled_standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->start;

# what the organisation's rule shows: used and held
sub org
{
	my ($node) = @_;
	return sql($node, q{SELECT used || ' ' || held FROM ai_account_limits('org') WHERE rule_id = 1});
}

my $rid = sql($primary, q{SELECT reservation_id FROM ai_check_limit('eve', 's', 5)});
like($rid, qr/^\d+$/, "eve holds reservation $rid on the organisation");
is(sql($primary, "SELECT ai_record_usage('eve', 'gpt-4o', 1000, 1000, 0, $rid)"), '1.25',
	'her record settles it');
$primary->wait_for_catchup($standby);
$primary->stop('immediate');
$primary->start;
is(sql($primary, q{SELECT allowed FROM ai_check_limit('eve', 's')}), 't',
	'after the crash, her next check (it finds the usage row and drops the reservation)');
is(org($primary), '1.25 0', 'the primary holds nothing of it');

# a later check with an estimate is flushed at its commit, and the drop with it
my $rid2 = sql($primary, q{SELECT reservation_id FROM ai_check_limit('eve', 's', 2)});
like($rid2, qr/^\d+$/, "eve holds reservation $rid2");
$primary->wait_for_catchup($standby);
$primary->stop('immediate');
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
  or die 'the standby was not promoted';
is(org($standby), '1.25 2', 'after a failover: the settled reservation is not held, the open one is');
is(sql($standby, q{SELECT allowed FROM ai_check_limit('eve', 's', 16.75)}), 't',
	'so 16.75 cents more fit');
is(sql($standby, q{SELECT allowed FROM ai_check_limit('eve', 's', 0.01)}), 'f', 'and no cent more');
is(sql($standby, 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the counters and reservations of the new primary are consistent');
$standby->stop;
done_testing();
