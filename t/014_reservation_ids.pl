# No reservation id is issued twice by any server of a cluster, so a record
# or a crash only ever acts on the reservation it names:
#   - a clean restart, then a crash: the check made after the restart holds
#     its estimate through the crash (its id is not the settled one's);
#   - a failover to a standby that saw the old primary's last reservation
#     only in the WAL (no save since): the new primary holds it under its
#     id, the old request's record settles it there, the new primary's ids
#     differ, and the cap holds;
#   - a point-in-time restore of a base backup: its ids differ from every
#     id the original issued after the backup, and the reservations the
#     archive holds come back under their own ids.
# Each path ends with the spend checked against the 100-cent cap.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use AiTest;
use Time::HiRes qw(sleep);

my %seen;    # every id issued in this test, by any server


# a check with an estimate: the id, or '' when refused
sub reserve
{
	my ($node, $user, $est) = @_;
	my $r = sql($node,
		"SELECT coalesce(reservation_id::text, '') FROM ai_check_limit('$user', 'cap', $est)");
	if ($r ne '')
	{
		ok(!$seen{$r}, "id $r was never issued before") or diag("first issued by $seen{$r}");
		$seen{$r} = $node->name;
	}
	return $r;
}


my $setup = q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans (plan, monthly_budget_cents) VALUES ('cap', 100);
INSERT INTO ai_model_prices VALUES ('m', 10, 10);  -- 1,000 output tokens: 1 cent
};

# ---- a clean restart, then a crash ----
my $node = PostgreSQL::Test::Cluster->new('single');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.save_interval = '100ms'
ai_ratelimit.timezone = 'UTC'
});
$node->start;
sql($node, $setup);

my $first = reserve($node, 'ann', 90);
like($first, qr/^\d+$/, 'ann: 90 cents reserved');
sql($node, "SELECT ai_record_usage('ann', 'm', 0, 1000, 0, $first)");
$node->restart;
my $second = reserve($node, 'ann', 90);
like($second, qr/^\d+$/, 'after a clean restart: 90 cents reserved again (1 spent)');
cmp_ok($second, '>', $first, 'the new id is above every id issued before the restart');
saved($node, 'cap');
$node->stop('immediate');
$node->start;
is(reserve($node, 'ann', 90), '', 'after a crash: the reservation in flight still holds its 90 cents');
is(sql($node, "SELECT reserved_cents FROM ai_ratelimit_status WHERE user_id = 'ann'"), '90',
	'held: 90 cents');
sql($node, "SELECT ai_record_usage('ann', 'm', 0, 90000, 0, $second)");
is(reserve($node, 'ann', 90), '', 'the late record settles it: 91 spent, no room for 90');
is(sql($node, "SELECT ai_monthly_spend('ann')"), '91', 'spend 91 cents on a 100-cent cap');
my $third = reserve($node, 'ann', 9);
cmp_ok($third, '>', $second, 'after the crash, ids continue above the ones issued before it');
is(sql($node, 'SELECT count(*) FROM ai_ratelimit_verify()'), '0', 'the shared state is consistent');

# the saver comes back when terminated (SIGTERM, as an operator's kill or
# a service manager sends; it has no database connection, so
# pg_terminate_backend does not reach it), and says so
my $saver = sql($node, 'SELECT saver_pid FROM ai_ratelimit_saves()');
like($saver, qr/^\d+$/, 'the saver runs');
is(sql($node, 'SELECT saver_starts FROM ai_ratelimit_saves()'), '1', 'started once');
kill 'TERM', $saver;
ok($node->poll_query_until('postgres', 'SELECT saver_pid IS NULL FROM ai_ratelimit_saves()'),
	'while it is gone, ai_ratelimit_saves() shows no saver');
ok($node->poll_query_until('postgres',
		"SELECT saver_pid IS NOT NULL AND saver_pid <> $saver AND saver_starts = 2 FROM ai_ratelimit_saves()"),
	'terminated, the saver is started again by the postmaster');
sql($node, "SELECT allowed FROM ai_check_limit('ben', 'cap')") for 1 .. 3;
saved($node, 'cap');
is(sql($node, "SELECT daily_used FROM ai_ratelimit_status WHERE user_id = 'ben'"), '3',
	'ben counted 3 after the saver came back');
$node->stop('immediate');
$node->start;
is(sql($node, "SELECT daily_used FROM ai_ratelimit_status WHERE user_id = 'ben'"), '3',
	'and the restarted saver saved them: a crash keeps them');
$node->stop;

# ---- a failover to a standby that never saw the last reservation ----
my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1, has_archiving => 1);
$primary->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.save_interval = '100ms'
ai_ratelimit.timezone = 'UTC'
});
$primary->start;
sql($primary, $setup);
reserve($primary, 'warmup', 1);
$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->start;

# from now on the primary saves nothing more: its next reservations reach
# the standby through the WAL alone (a check logs its reservation, 1.9)
$primary->append_conf('postgresql.conf', "ai_ratelimit.save_interval = '1h'");
$primary->reload;
sleep(0.5);
my $old = reserve($primary, 'cid', 60);
like($old, qr/^\d+$/, 'old primary: cid holds 60 cents');
my @after_backup = ($old, reserve($primary, 'dan', 5), reserve($primary, 'dan', 5));
# everything so far in the archive too, for the restore below
my $seg = sql($primary, 'SELECT pg_walfile_name(pg_current_wal_lsn())');
sql($primary, 'SELECT pg_switch_wal()');
ok($primary->poll_query_until('postgres', "SELECT last_archived_wal >= '$seg' FROM pg_stat_archiver"),
	'old primary: its WAL is archived');
$primary->wait_for_catchup($standby);
$primary->stop('immediate');
$standby->promote;

is(reserve($standby, 'cid', 60), '',
	'new primary: the old request\'s 60 cents are held there, so another 60 is refused');
my ($ret, $out, $err) = $standby->psql('postgres',
	"SELECT ai_record_usage('cid', 'm', 0, 60000, 0, $old)");
is($out, '60', 'the old request records on the new primary: 60 cents');
unlike($err, qr/not open/, 'settling its reservation, under its own id');
is(sql($standby, "SELECT coalesce(sum(reserved_cents), 0) FROM ai_ratelimit_status WHERE user_id = 'cid'"), '0',
	'nothing is held any more');
my $new = reserve($standby, 'cid', 40);
like($new, qr/^\d+$/, 'new primary: cid holds the 40 cents left');
isnt($new, $old, 'the new primary issued another id');
is(($new >> 16) & 63, 2, 'its ids carry the new timeline');
is(($old >> 16) & 63, 1, 'the old primary\'s carried the old one');
is(reserve($standby, 'cid', 1), '', 'a request of one cent more is refused');
sql($standby, "SELECT ai_record_usage('cid', 'm', 0, 40000, 0, $new)");
is(sql($standby, "SELECT ai_monthly_spend('cid')"), '100', 'spend 100 cents on a 100-cent cap');
$standby->stop;

# ---- a point-in-time restore of the base backup ----
my $restored = PostgreSQL::Test::Cluster->new('restored');
$restored->init_from_backup($primary, 'b1', has_restoring => 1, standby => 0);
$restored->start;
ok($restored->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'),
	'restored to the end of the archive, on a new timeline');
my @restored_ids = map { reserve($restored, "eve$_", 5) } 1 .. 3;
for my $id (@restored_ids)
{
	ok(!grep({ $_ eq $id } @after_backup), "restored id $id is none of the original's");
}
($ret, $out, $err) = $restored->psql('postgres',
	"SELECT ai_record_usage('dan', 'm', 0, 5000, 0, $after_backup[1])");
is($out, '5', 'a record of an id the original issued after the backup counts here');
unlike($err, qr/is not open/,
	'and settles its reservation: the archive replayed to its end holds it (1.9), under its own id');
is(sql($restored, 'SELECT count(*) FROM ai_ratelimit_verify()'), '0', 'the shared state is consistent');
$restored->stop;

done_testing();
