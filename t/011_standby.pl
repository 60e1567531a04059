# A primary and streaming standbys.  A standby refuses every check,
# reservation, reset and record with SQLSTATE 25006, and shows the
# primary's counters (replicated through the WAL every save interval) in
# ai_ratelimit_status.  A standby made by pg_basebackup ends up with the
# primary's current counters.  After a failover the new primary still
# refuses a used-up daily limit and a used-up budget, settles a reservation
# made on the old primary under its id, and a session opened on the standby
# before the promotion sees plan and price changes made on the old primary.
# A switchover (clean stop, then promotion) loses no count.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use AiTest;
use IPC::Run;
use Time::HiRes qw(sleep);

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.save_interval = '200ms'
ai_ratelimit.timezone = 'UTC'
});
$primary->start;


# what a statement raised, as "SQLSTATE message", or "ok"
sql($primary, q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans VALUES ('tight', 100, '1 hour', 3, 100);
INSERT INTO ai_model_prices VALUES ('m', 10, 10);
CREATE FUNCTION outcome(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'ok';
EXCEPTION WHEN others THEN
	RETURN SQLSTATE || ' ' || SQLERRM;
END $$;
});

# dora uses up her day; bea spends 150 cents of a 100-cent budget (her
# spend is cached by her checks first); before any standby exists
sql($primary, q{SELECT allowed FROM ai_check_limit('dora', 'tight')}) for 1 .. 3;
sql($primary, q{SELECT allowed FROM ai_check_limit('bea', 'tight')});
sql($primary, q{SELECT ai_record_usage('bea', 'm', 0, 150000)});
is(sql($primary, q{SELECT limited_by FROM ai_check_limit('bea', 'tight')}), 'monthly_budget',
	'primary: bea is over her budget');

# The backup starts after a save that holds these counts has reached both
# the WAL and the files.  (A save writes the WAL first, then its files: a
# backup whose start falls between the two, and that copies the files
# before they are written, misses that save's counts until they change
# again; the README says so.)
saved($primary, 'tight');
$primary->backup('b1');

# after the backup: only the WAL can bring these to the standby
sql($primary, q{SELECT allowed FROM ai_check_limit('cid', 'tight')}) for 1 .. 2;
my $rid = sql($primary, q{SELECT reservation_id FROM ai_check_limit('res', 'tight', 60)});
like($rid, qr/^\d+$/, "res holds reservation $rid");

my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->start;

sub daily_on
{
	my ($node, $user) = @_;
	return sql($node, "SELECT coalesce(max(daily_used), 0) FROM ai_ratelimit_status WHERE user_id = '$user'");
}
ok($standby->poll_query_until('postgres',
		q{SELECT count(*) FROM ai_ratelimit_status WHERE user_id = 'cid' AND daily_used = 2}, '1'),
	'standby from a base backup: counts taken after the backup arrive through the WAL');
is(daily_on($standby, 'dora'), 3, 'standby: counts taken before the backup are there too');
is(sql($standby, q{SELECT reserved_cents FROM ai_ratelimit_status WHERE user_id = 'res'}), '60',
	'standby: the open reservation is replicated');

# a standby refuses every call that would count, consume or reset
for my $call (q{SELECT ai_check_limit('dora', 'tight')},
	q{SELECT ai_enforce_limit('dora', 'tight')},
	q{SELECT ai_peek_limit('dora', 'tight')},
	q{SELECT ai_reset_limits('dora')},
	q{SELECT ai_record_usage('dora', 'm', 1, 1)},
	q{SELECT ai_release_reservation(1)})
{
	my ($fn) = $call =~ /SELECT (\w+)/;
	like(sql($standby, "SELECT outcome(\$q\$$call\$q\$)"),
		qr/^25006 $fn must run on the primary: this server is a standby$/,
		"standby: $fn fails at once with 25006");
}
is(sql($standby, q{SELECT ai_monthly_spend('bea')}), '150',
	'standby: ai_monthly_spend reads the replicated usage rows');
is(sql($standby, q{SELECT month_spend_cents FROM ai_ratelimit_status WHERE user_id = 'bea'}), '150',
	'standby: the status shows the spend in the replicated usage rows');
is(daily_on($standby, 'dora'), 3, 'standby: the refusals took nothing');

# more counting on the primary: replicated within a save interval
sql($primary, q{SELECT allowed FROM ai_check_limit('jon', 'tight')});
ok($standby->poll_query_until('postgres',
		q{SELECT count(*) FROM ai_ratelimit_status WHERE user_id = 'jon' AND daily_used = 1}, '1'),
	'standby: a new count arrives');
sql($primary, q{SELECT ai_reset_limits('dora')});
ok($standby->poll_query_until('postgres',
		q{SELECT count(*) FROM ai_ratelimit_status WHERE user_id = 'dora' AND daily_used > 0}, '0'),
	'standby: a reset arrives');
sql($primary, q{SELECT allowed FROM ai_check_limit('dora', 'tight')}) for 1 .. 3;

# a restart of the primary: its saver's first save is a whole base for the
# files, and the WAL still gets what changed
$primary->restart;
sql($primary, q{SELECT allowed FROM ai_check_limit('nia', 'tight')}) for 1 .. 2;
ok($standby->poll_query_until('postgres',
		q{SELECT count(*) FROM ai_ratelimit_status WHERE user_id = 'nia' AND daily_used = 2}, '1'),
	'standby: counts taken after the primary restarted arrive (its first save is whole)');

# a session opened on the standby, alive across the promotion
my ($in, $out, $err) = ('', '', '');
my $session = IPC::Run::start([ 'psql', '-XAtq', '-d', $standby->connstr('postgres'), '-f', '-' ],
	'<', \$in, '>', \$out, '2>', \$err);
sub in_session
{
	my ($q) = @_;
	$out = '';
	$in .= "$q;\n\\echo __done\n";
	my $t = time;
	IPC::Run::pump($session) until $out =~ /__done\n/ || time - $t > 60;
	$out =~ s/__done\n//;
	chomp $out;
	return $out;
}
like(in_session(q{SELECT outcome($$SELECT ai_check_limit('gus', 'tight')$$)}), qr/^25006 /,
	'standby session: a check is refused');
is(in_session(q{SELECT plan FROM ai_ratelimit_status WHERE user_id = 'cid'}), 'tight',
	'standby session: the status names the plan');

# config changes on the primary, made while that session is open
sql($primary, q{
UPDATE ai_plans SET daily_limit = 2 WHERE plan = 'tight';
INSERT INTO ai_plans VALUES ('roomy', NULL, '1 minute', 1000, 100000);
INSERT INTO ai_user_plans VALUES ('hal', 'roomy');
INSERT INTO ai_user_limits (user_id, daily_limit) VALUES ('ivy', 1);
UPDATE ai_model_prices SET output_usd_per_mtok = 20 WHERE model = 'm';
});
ok($standby->poll_query_until('postgres',
		q{SELECT count(*) FROM ai_ratelimit_status WHERE user_id = 'dora' AND daily_used = 3}, '1'),
	'standby: the counts after the reset arrive');
$primary->wait_for_catchup($standby, 'replay', $primary->lsn('insert'));

# failover: the primary dies without a clean shutdown
$primary->stop('immediate');
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
  or die 'the standby was not promoted';

is(sql($standby, q{SELECT limited_by FROM ai_check_limit('dora', 'tight')}), 'daily',
	'new primary: a daily limit used up on the old primary is still used up');
is(sql($standby, q{SELECT limited_by FROM ai_check_limit('bea', 'tight')}), 'monthly_budget',
	'new primary: a budget used up on the old primary is still used up (spend read from the tables)');
is(sql($standby, qq{SELECT ai_record_usage('res', 'm', 0, 1000, 0, $rid) = 2}), 't',
	'new primary: a reservation made on the old primary is settled under its id, at the new price');
is(sql($standby, q{SELECT reserved_cents FROM ai_ratelimit_status WHERE user_id = 'res'}), '0',
	'new primary: the settled reservation no longer holds money');

# the session from before the promotion sees every change made back then
# (it read the plans for the status while the daily limit was still 3)
is(in_session(q{SELECT limited_by FROM ai_check_limit('cid', 'tight')}), 'daily',
	'old standby session: the lowered daily limit of the plan (cid has 2 of 2)');
is(in_session(q{SELECT allowed FROM ai_check_limit('hal', NULL)}), 't',
	'old standby session: a user plan added on the old primary');
is(in_session(q{SELECT remaining FROM ai_check_limit('hal', NULL)}), '998',
	'old standby session: ... with that plan\'s limits');
is(in_session(q{SELECT allowed FROM ai_check_limit('ivy', 'roomy')}), 't',
	'old standby session: an override added on the old primary allows one');
is(in_session(q{SELECT limited_by FROM ai_check_limit('ivy', 'roomy')}), 'daily',
	'old standby session: ... and refuses the second');
is(in_session(q{SELECT ai_record_usage('kim', 'm', 0, 1000) = 2}), 't',
	'old standby session: a price changed on the old primary');

# the new primary replicates to a standby of its own
$standby->backup('b2');
my $standby2 = PostgreSQL::Test::Cluster->new('standby2');
$standby2->init_from_backup($standby, 'b2', has_streaming => 1);
$standby2->start;
sql($standby, q{SELECT allowed FROM ai_check_limit('lou', 'tight')});
$standby->wait_for_catchup($standby2);
ok($standby2->poll_query_until('postgres',
		q{SELECT count(*) FROM ai_ratelimit_status WHERE user_id = 'lou' AND daily_used = 1}, '1'),
	'second standby: counts of the new primary arrive');
is(daily_on($standby2, 'dora'), 3, 'second standby: counts from before the failover too');

$in .= "\\q\n";
$session->finish;

# switchover: counts taken just before a clean stop of the primary are not
# lost (with saves an hour apart, only the saver's last save at the stop
# can carry them)
sql($standby, q{ALTER SYSTEM SET ai_ratelimit.save_interval = '1h'; SELECT pg_reload_conf()});
sleep(1);
sql($standby, q{SELECT allowed FROM ai_check_limit('max', 'tight')}) for 1 .. 2;
$standby->stop('fast');
$standby2->promote;
$standby2->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
  or die 'the second standby was not promoted';
is(daily_on($standby2, 'max'), 2,
	'switchover: the counts taken just before the clean stop are all there');
is(sql($standby2, q{SELECT limited_by FROM ai_check_limit('max', 'tight')}), 'daily',
	'switchover: ... and the next check is refused');
$standby2->stop;
done_testing();
