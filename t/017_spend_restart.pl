# A user's cached monthly spend comes back with a clean restart, so the
# first budget check after it reads no usage rows; after a crash it is
# loaded from the tables again, and spend recorded after the last save
# counts.  A copy of a cleanly stopped data directory that replays WAL (a
# standby, a point-in-time restore) loads it from the tables too.  The
# same for the cached uses of calendar rules of cents.  Reads of the usage
# tables are seen in pg_stat_user_tables.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('spend_restart');
$node->init(allows_streaming => 1);
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.timezone = 'UTC'
restart_after_crash = on
});
$node->start;
sub sql { return $node->safe_psql('postgres', $_[0]); }
sql(q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans (plan, monthly_budget_cents) VALUES ('cap', 100);
});

# scans of the usage tables, as this session sees them once its own are flushed
sub usage_scans
{
	my ($then, $n) = @_;
	return ($n // $node)->safe_psql('postgres', qq{
		$then;
		SELECT pg_stat_force_next_flush();
		SELECT pg_sleep(0.1);
		SELECT pg_stat_clear_snapshot();
		SELECT sum(seq_scan + coalesce(idx_scan, 0))
		FROM pg_stat_user_tables WHERE relname IN ('ai_usage', 'ai_usage_archive');
	});
}
sub last_line { my @l = split /\n/, $_[0]; return $l[-1]; }

# ann spends 60 cents through the check path (her spend is cached); cat's
# row goes in by hand (her spend is not cached)
my $id = sql("SELECT reservation_id FROM ai_check_limit('ann', 'cap', 60)");
sql("SELECT ai_record_usage('ann', 'gpt-4o', 0, 60000, 0, $id)");
is(sql("SELECT ai_monthly_spend('ann')"), '60', 'ann spent 60 cents');
sql(q{INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens,
      output_tokens, cached_input_tokens, cost_cents)
      VALUES (now(), (now() AT TIME ZONE 'UTC')::date, 'cat', 'x', 'x', 0, 0, 0, 70)});

$node->restart;
# the reservations whose records come later, by id
sql('CREATE TABLE resv (r bigint)');
my $before = last_line(usage_scans('SELECT 1'));
my $after = last_line(usage_scans(
	"INSERT INTO resv SELECT reservation_id FROM ai_check_limit('ann', 'cap', 40)"));
is($after, $before, 'clean restart: ann\'s first budget check reads no usage row');
is(sql("SELECT allowed::text || ' ' || limited_by FROM ai_check_limit('ann', 'cap', 1)"),
	'false monthly_budget', 'and her restored spend with the 40 cents held fills the cap exactly');
$before = $after;
$after = last_line(usage_scans("SELECT allowed FROM ai_check_limit('cat', 'cap', 30)"));
cmp_ok($after, '>', $before, 'cat\'s spend was not cached: her first check reads the tables');
is(sql("SELECT allowed FROM ai_check_limit('cat', 'cap', 1)"), 'f',
	'and counts her 70 cents: 70 + 30 held fills the cap');

# after a crash the saved spend is not trusted: 15 cents recorded after
# the last save must count
is(sql("SELECT open_reservations FROM ai_ratelimit_status WHERE user_id = 'ann'"), '1',
	'ann holds the 40 cents of her check');
# her call costs 20 cents and settles it: spend 80, cached
sql("SELECT ai_record_usage('ann', 'gpt-4o', 0, 20000, 0, (SELECT max(r) FROM resv))");
is(sql("SELECT month_spend_cents || ' ' || open_reservations FROM ai_ratelimit_status WHERE user_id = 'ann'"),
	'80 0', 'ann spent 80 cents and holds nothing');
# a periodic save with 80 cents in it: one that started after $t (a change
# after $t makes sure one does)
my $t = sql('SELECT clock_timestamp()');
sql("SELECT allowed FROM ai_check_limit('zz-save-marker', 'cap')");
$node->poll_query_until('postgres', "SELECT last_save > '$t' FROM ai_ratelimit_saves()")
  or die 'no save';
sql("SELECT ai_record_usage('ann', 'gpt-4o', 0, 15000)");
$node->stop('immediate');
$node->start;
is(sql("SELECT allowed FROM ai_check_limit('ann', 'cap', 6)"), 'f',
	'after a crash: 95 cents are counted, not the 80 of the last save');
is(sql("WITH c AS (SELECT * FROM ai_check_limit('ann', 'cap', 5)), i AS (INSERT INTO resv SELECT reservation_id FROM c)
	SELECT allowed FROM c"), 't', 'and exactly 5 are left');

# a cold copy of the stopped primary becomes a standby: its save holds ann's
# 95 cents, but it replays what the primary records after the copy;
# promoted, it must count that
sql("SELECT ai_record_usage('ann', 'gpt-4o', 0, 0, 0, (SELECT max(r) FROM resv))");    # the 5 held settle for nothing
is(sql("SELECT month_spend_cents || ' ' || open_reservations FROM ai_ratelimit_status WHERE user_id = 'ann'"),
	'95 0', 'ann: 95 cents spent, nothing held');
$node->stop;
$node->backup_fs_cold('cold');
$node->start;
sql("SELECT ai_record_usage('ann', 'gpt-4o', 0, 3000)");
is(sql("SELECT ai_monthly_spend('ann')"), '98', 'the primary records 3 more cents: 98');
my $standby = PostgreSQL::Test::Cluster->new('cold_standby');
$standby->init_from_backup($node, 'cold', has_streaming => 1);
$standby->start;
$node->wait_for_catchup($standby);
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'no promotion';
is($standby->safe_psql('postgres', "SELECT allowed FROM ai_check_limit('ann', 'cap', 3)"), 'f',
	'promoted: the 3 cents recorded after the copy count (98 + 3 is over the cap)');
is($standby->safe_psql('postgres', "SELECT allowed FROM ai_check_limit('ann', 'cap', 2)"), 't',
	'and exactly 2 are left');
$standby->stop;

# ---- the cached uses of the rules come back with a clean restart too ----
# a month's cents for the plan (its holder: the user) and for an account
# (its holder: the account, the use summed over its subtree)
my $rn = PostgreSQL::Test::Cluster->new('rules_restart');
$rn->init;
$rn->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.timezone = 'UTC'
});
$rn->start;
sub rsql { return $rn->safe_psql('postgres', $_[0]); }
rsql(q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('r', NULL, NULL);
INSERT INTO ai_accounts (account_id, parent_id) VALUES ('r-org', NULL);
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES ('r-org', 'ida', true);
INSERT INTO ai_accounts (account_id, parent_id) VALUES ('r-team', NULL);
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES ('r-team', 'ivy', true);
INSERT INTO ai_rules (scope, scope_id, metric, "window", max_value) VALUES
    ('plan', 'r', 'cents', 'month', 100), ('account', 'r-org', 'cents', 'month', 100),
    ('account', 'r-team', 'cents', 'month', 100);
});
# each spends through the check path; eve's 50-cent row then goes in by hand
for (['dan', 60], ['ida', 30], ['eve', 10], ['fay', 30], ['gus', 20], ['hal', 50], ['ivy', 25])
{
	my ($u, $c) = @$_;
	my $rid = rsql("SELECT reservation_id FROM ai_check_limit('$u', 'r', $c)");
	rsql("SELECT ai_record_usage('$u', 'gpt-4o', 0, ${c}000, 0, $rid)");
}
rsql(q{INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens,
       output_tokens, cached_input_tokens, cost_cents)
       VALUES (now(), (now() AT TIME ZONE 'UTC')::date, 'eve', 'x', 'x', 0, 0, 0, 50)});
$rn->restart;
rsql('SELECT 1');
$before = last_line(usage_scans('SELECT 1', $rn));
$after = last_line(usage_scans(q{
	SELECT string_agg(allowed::text, ' ' ORDER BY n) FROM (
	  SELECT 1 n, allowed FROM ai_check_limit('dan', 'r', 40)
	  UNION ALL SELECT 2, allowed FROM ai_check_limit('ida', 'r', 70)) x}, $rn));
is($after, $before, 'clean restart: the first checks under the rules read no usage row');
is(rsql("SELECT allowed::text || ' ' || limited_by FROM ai_check_limit('dan', 'r', 1)"),
	'false rule', 'dan: his restored 60 cents and the 40 held fill the plan\'s rule');
is(rsql("SELECT allowed::text || ' ' || limited_by FROM ai_check_limit('ida', 'r', 1)"),
	'false rule', 'ida: her restored 30 cents and the 70 held fill both rules');
$before = $after;
$after = last_line(usage_scans("SELECT allowed FROM ai_check_limit('eve', 'r', 41)", $rn));
cmp_ok($after, '>', $before, 'eve\'s use was stale at the shutdown (a row by hand): her check reads the tables');
is(rsql("SELECT allowed FROM ai_check_limit('eve', 'r', 40)"), 't',
	'and counts 60 cents: 40 more fit, 41 did not');
is(rsql("SELECT allowed FROM ai_check_limit('eve', 'r', 1)"), 'f', 'and then nothing');
# a row by hand after the start, before fay's first check: her restored use
# must not be taken as exact any more
rsql(q{INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens,
       output_tokens, cached_input_tokens, cost_cents)
       VALUES (now(), (now() AT TIME ZONE 'UTC')::date, 'fay', 'x', 'x', 0, 0, 0, 50)});
is(rsql("SELECT allowed FROM ai_check_limit('fay', 'r', 21)"), 'f',
	'fay: a row written by hand after the start counts (30 + 50 + 21 is over the rule)');
is(rsql("SELECT allowed FROM ai_check_limit('fay', 'r', 20)"), 't', 'and exactly 20 are left');

# A second clean restart.  hal's and ivy's uses (ivy's under her account
# r-team too) came back with the first and were only checked since, with
# no estimate (allowed, nothing recorded, nothing held): this shutdown
# keeps them as well.  gus recorded before the first restart and was not
# seen since: his restored use names no holder, so it is not kept, and his
# first check reads the tables, exact.
is(rsql(q{SELECT string_agg(allowed::text, ' ' ORDER BY n) FROM (
	SELECT 1 n, allowed FROM ai_check_limit('hal', 'r')
	UNION ALL SELECT 2, allowed FROM ai_check_limit('ivy', 'r')) x}),
	'true true', 'hal and ivy are checked once, with no estimate');
$rn->restart;
rsql('SELECT 1');
$before = last_line(usage_scans('SELECT 1', $rn));
$after = last_line(usage_scans(q{
	SELECT string_agg(allowed::text || ' ' || limited_by, ', ' ORDER BY n) FROM (
	  SELECT 1 n, * FROM ai_check_limit('hal', 'r', 51)
	  UNION ALL SELECT 2, * FROM ai_check_limit('ivy', 'r', 76)) x}, $rn));
is($after, $before, 'second clean restart: uses only checked since the first read no usage row');
is(rsql("SELECT allowed FROM ai_check_limit('hal', 'r', 50)"), 't',
	'hal: his 50 cents came through both restarts, 50 more fit (51 did not)');
is(rsql("SELECT allowed FROM ai_check_limit('ivy', 'r', 75)"), 't',
	'ivy: her 25 cents, in her plan\'s rule and in r-team\'s, 75 more fit (76 did not)');
$before = last_line(usage_scans('SELECT 1', $rn));
$after = last_line(usage_scans("SELECT allowed FROM ai_check_limit('gus', 'r', 81)", $rn));
cmp_ok($after, '>', $before, 'gus, not seen since the first start: his first check reads the tables');
is(rsql("SELECT allowed::text || ' ' || limited_by FROM ai_check_limit('gus', 'r', 81)"),
	'false rule', 'gus: his 20 cents count, 81 more do not fit');
is(rsql("SELECT allowed FROM ai_check_limit('gus', 'r', 80)"), 't', 'and 80 do');
$rn->stop;

done_testing();
