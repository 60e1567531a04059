# The counters of shared budgets live through what a user's own counters
# live through: a clean restart, a crash (what the last save held), a
# standby made from a base backup that follows through the WAL, and a
# failover.  Requests counted on a team stay counted, an estimate held on
# the organisation stays held (and is settled there under its own id on
# the new primary), and what was recorded counts from the tables on every
# path.  After a crash, an estimate that a record settled since the last
# save is not held again on the accounts either.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use AiTest;

my $primary = PostgreSQL::Test::Cluster->new('accounts_primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.save_interval = '100ms'
ai_ratelimit.timezone = 'UTC'
});
$primary->start;


sql($primary, q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('r', 1000, 1000);
INSERT INTO ai_model_prices VALUES ('claude-opus-4-5', 5, 25);   -- 400 output tokens: 1 cent
INSERT INTO ai_accounts (account_id, parent_id) VALUES ('org', NULL), ('red', 'org'), ('blue', 'org');
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES
    ('red', 'ann', true), ('red', 'ben', true), ('blue', 'cal', true), ('org', 'dan', true),
    ('blue', 'eve', true), ('blue', 'fay', true);
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value) VALUES
    (1, 'account', 'org', 'cents', 'month', 20),
    (2, 'account', 'red', 'requests', 'day', 3);
});

# what the organisation shows: used and held
sub org { my ($node) = @_;
	return sql($node, q{SELECT used || ' ' || held FROM ai_explain_limits('dan', NULL, 'r') WHERE rule_id = 1}); }

# the state every path must keep (refused checks change nothing)
sub state_is
{
	my ($node, $what, $org) = @_;
	is(sql($node, q{SELECT allowed::text || coalesce(' ' || limited_by, '')
		FROM ai_check_limit('ann', 'r')}),
		'false account', "$what: the red team's three requests of the day are still counted");
	is(org($node), $org, "$what: the organisation's spend and what is held on it");
	my ($used, $held) = split / /, $org;
	my $left = 20 - $used - $held;
	is(sql($node, qq{SELECT allowed::text || coalesce(' ' || limited_by, '')
		FROM ai_check_limit('dan', 'r', $left + 0.5)}),
		'false account', "$what: so $left.5 cents more do not fit");
}

sql($primary, q{SELECT allowed FROM ai_check_limit('ann', 'r')}) for 1 .. 3;
my $rid = sql($primary, q{SELECT reservation_id FROM ai_check_limit('cal', 'r', 6)});
like($rid, qr/^\d+$/, "cal holds reservation $rid on blue and the organisation");
sql($primary, "SELECT ai_record_usage('cal', 'claude-opus-4-5', 0, 1200, 0, $rid)");   # 3 cents, settles it
$rid = sql($primary, q{SELECT reservation_id FROM ai_check_limit('cal', 'r', 6)});
like($rid, qr/^\d+$/, "cal holds reservation $rid");
state_is($primary, 'primary', '3 6');

# a clean restart
$primary->restart;
state_is($primary, 'after a clean restart', '3 6');

# a crash: what the last save held
saved($primary, 'r');
$primary->stop('immediate');
$primary->start;
state_is($primary, 'after a crash', '3 6');

# a record that settles an estimate after the last save, then a crash: the
# estimate is not held again, on the user or on the accounts
my $rid_eve = sql($primary, q{SELECT reservation_id FROM ai_check_limit('eve', 'r', 5)});
saved($primary, 'r');
is(org($primary), '3 11', 'eve holds 5 more');
sql($primary, "SELECT ai_record_usage('eve', 'claude-opus-4-5', 0, 800, 0, $rid_eve)");   # 2 cents
is(org($primary), '5 6', 'her record settles it: 2 cents spent');
$primary->stop('immediate');
$primary->start;
is(sql($primary, q{SELECT allowed FROM ai_check_limit('eve', 'r', 0.01)}), 't',
	'after a crash: eve checks again (her restored reservations are looked up)');
is(org($primary), '5 6.01', 'after a crash: her settled 5 cents are not held on the organisation again');

# a standby from a base backup; counts taken after it arrive by the WAL
$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('accounts_standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->start;
my $rid2 = sql($primary, q{SELECT reservation_id FROM ai_check_limit('fay', 'r', 7)});
like($rid2, qr/^\d+$/, "fay holds reservation $rid2 on blue and the organisation");
saved($primary, 'r');
$primary->wait_for_catchup($standby);

# failover: the standby is promoted, the old primary is gone
$primary->stop('immediate');
$standby->promote;
state_is($standby, 'after a failover', '5 13.01');
# cal's call costs 4 cents and settles his reservation under its id, on every level
my ($ret, $out, $err) = $standby->psql('postgres',
	"SELECT ai_record_usage('cal', 'claude-opus-4-5', 0, 1600, 0, $rid)");
is($err, '', 'the new primary settles cal\'s reservation under its own id');
is(org($standby), '9 7.01', 'and counts its cost on the organisation in place of the estimate');
is(sql($standby, q{SELECT allowed FROM ai_check_limit('dan', 'r', 3.99)}), 't', 'so 3.99 cents more fit');
is(sql($standby, q{SELECT allowed FROM ai_check_limit('dan', 'r', 0.01)}), 'f', 'and no cent more');
is(sql($standby, 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the counters and reservations of the new primary are consistent');

$standby->stop;
done_testing();
