# The counters of the rules of ai_rules live through what a user's own
# counters live through: a clean restart, a crash (what the last save
# held), a standby made from a base backup that follows through the WAL,
# and a failover.  A model's requests counted under a rule stay counted,
# an estimate held on a model's budget stays held (and is settled under
# its own id on the new primary), and a model's recorded spend counts from
# the tables on every path.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::Bin;
use AiTest;

my $primary = PostgreSQL::Test::Cluster->new('rules_primary');
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
INSERT INTO ai_model_prices VALUES ('claude-opus-4-5', 5, 25);   -- 4,000 output tokens: 10 cents
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value) VALUES
    (1, 'plan', 'r', 'gpt-4o', 'requests', 'day', 3),
    (2, 'plan', 'r', 'claude-opus-*', 'cents', 'day', 10),
    (3, 'plan', 'r', 'gpt-4o', 'requests', 'minute', 100);
});

# the state every path must keep
sub state_is
{
	my ($node, $what) = @_;
	is(sql($node, q{SELECT allowed::text || coalesce(' ' || limited_by, '')
		FROM ai_check_limit('ann', 'r', model => 'gpt-4o')}),
		'false rule', "$what: ann's three gpt-4o requests of the day are still counted");
	is(sql($node, q{SELECT used || ' ' || held FROM ai_explain_limits('ben', 'claude-opus-4-5', 'r')
		WHERE rule_id = 2}),
		'0 6', "$what: ben's 6 cents are still held on the Opus budget");
	is(sql($node, q{SELECT allowed::text || coalesce(' ' || limited_by, '')
		FROM ai_check_limit('ben', 'r', 5, model => 'claude-opus-4-5')}),
		'false rule', "$what: so 5 more do not fit");
	is(sql($node, q{SELECT allowed::text || coalesce(' ' || limited_by, '') || ' ' || used
		FROM ai_check_limit('cal', 'r', 3, model => 'claude-opus-4-5')}),
		'false rule 8', "$what: cal's 8 recorded cents count");
}

sql($primary, q{SELECT allowed FROM ai_check_limit('ann', 'r', model => 'gpt-4o')}) for 1 .. 3;
my $rid = sql($primary, q{SELECT reservation_id FROM ai_check_limit('ben', 'r', 6, model => 'claude-opus-4-5')});
like($rid, qr/^\d+$/, "ben holds reservation $rid");
sql($primary, q{SELECT allowed FROM ai_check_limit('cal', 'r', 1, model => 'claude-opus-4-5')});
sql($primary, q{SELECT ai_record_usage('cal', 'claude-opus-4-5', 0, 3200, 0)});
state_is($primary, 'primary');

# a clean restart
$primary->restart;
state_is($primary, 'after a clean restart');

# a crash: what the last save held
saved($primary, 'r');
$primary->stop('immediate');
$primary->start;
state_is($primary, 'after a crash');

# a standby from a base backup; counts taken after it arrive by the WAL
$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('rules_standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->start;
sql($primary, q{SELECT allowed FROM ai_check_limit('dan', 'r', model => 'gpt-4o')}) for 1 .. 3;
my $rid2 = sql($primary, q{SELECT reservation_id FROM ai_check_limit('eve', 'r', 7, model => 'claude-opus-4-5')});
like($rid2, qr/^\d+$/, "eve holds reservation $rid2");
saved($primary, 'r');
$primary->wait_for_catchup($standby);

# failover: the standby is promoted, the old primary is gone
$primary->stop('immediate');
$standby->promote;
state_is($standby, 'after a failover');
is(sql($standby, q{SELECT allowed FROM ai_check_limit('dan', 'r', model => 'gpt-4o')}), 'f',
	'after a failover: dan\'s requests, counted after the backup, came by the WAL');
is(sql($standby, q{SELECT allowed FROM ai_check_limit('eve', 'r', 4, model => 'claude-opus-4-5')}), 'f',
	'after a failover: eve\'s 7 cents held on the Opus budget came by the WAL');
is(sql($standby, q{SELECT allowed FROM ai_check_limit('eve', 'r', 3, model => 'claude-opus-4-5')}), 't',
	'and 3 more fit');
# ben's call costs 4 cents and settles his reservation under its id
my ($ret, $out, $err) = $standby->psql('postgres',
	"SELECT ai_record_usage('ben', 'claude-opus-4-5', 0, 1600, 0, $rid)");
is($err, '', 'the new primary settles ben\'s reservation under its own id');
is(sql($standby, q{SELECT used || ' ' || held FROM ai_explain_limits('ben', 'claude-opus-4-5', 'r')
	WHERE rule_id = 2}), '4 0', 'and counts its cost in place of the estimate');
is(sql($standby, q{SELECT allowed FROM ai_check_limit('ben', 'r', 6, model => 'claude-opus-4-5')}), 't',
	'so 6 more fit');
is(sql($standby, q{SELECT allowed FROM ai_check_limit('ben', 'r', 1, model => 'claude-opus-4-5')}), 'f',
	'and no cent more');
is(sql($standby, 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the counters and reservations of the new primary are consistent');

$standby->stop;
done_testing();
