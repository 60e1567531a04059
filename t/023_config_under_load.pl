# Configuration edited under load: 6 clients check (with a model's priced
# estimate), wait, and record in a separate transaction, for 40 members of
# 4 teams of one organisation (a cents rule on each team and on the
# organisation, 200 rules of the plan by model), and call ai_limit_state and
# ai_explain_limits, while the same clients now and then edit ai_rules,
# ai_accounts, ai_account_members, ai_plans and ai_model_prices.  A call
# reads one snapshot of the caches: an edit committed while it runs is read
# by the next call, and no backend may crash (a crash restarts every
# connection of the server).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib 't';
use AiTest;

my $node = PostgreSQL::Test::Cluster->new('config_load');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'ai_ratelimit'");
$node->append_conf('postgresql.conf', "max_connections = 30");
$node->start;

my $started = sql($node, 'SELECT pg_postmaster_start_time()');

sql($node, q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok)
    SELECT 'ce-m' || i, 0.1, 0.2 FROM generate_series(1, 200) i;
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents)
    VALUES ('ce', NULL, 1000000, 100000);
INSERT INTO ai_accounts (account_id, parent_id, alert_percents) VALUES ('ce-org', NULL, '{50,90}');
INSERT INTO ai_accounts (account_id, parent_id, alert_percents)
    SELECT 'ce-t' || t, 'ce-org', '{80}' FROM generate_series(1, 4) t;
INSERT INTO ai_account_members (account_id, user_id, is_default)
    SELECT 'ce-t' || (1 + (u - 1) / 10), 'ce-' || u, true FROM generate_series(1, 40) u;
-- rules 1-200: the plan's, one per model; 201-204: each team's; 205: the organisation's
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value)
    SELECT m, 'plan', 'ce', 'ce-m' || m, 'cents', 'day', 100000 FROM generate_series(1, 200) m;
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value)
    SELECT 200 + t, 'account', 'ce-t' || t, 'cents', 'month', 100000 FROM generate_series(1, 4) t;
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value)
    VALUES (205, 'account', 'ce-org', 'cents', 'month', 100000);
-- a record only of what was allowed, with its reservation
CREATE FUNCTION ce_record(u int, m int, rid bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF rid > 0 THEN
        PERFORM ai_record_usage('ce-' || u, 'ce-m' || m, 100, 50, 0, rid);
    END IF;
END $$;
});

# Each transaction is one step of one client: mostly a check, a wait and
# a record (separate transactions, as an application calls a model), the
# rest an edit of the configuration or a read of the limits.
$node->pgbench('-n -c 6 -j 3 -T 20', 0, [qr/actually processed: \d+/], [qr/^$/],
	'6 clients check, call and record while the configuration changes',
	{
		'config_load' => q{
\set u random(1, 40)
\set m random(1, 200)
\set e random(1, 30)
\if :e = 1
UPDATE ai_rules SET max_value = max_value + 1 WHERE rule_id IN (:m, 201 + :u % 4, 205);
\elif :e = 2
UPDATE ai_accounts SET alert_percents = ARRAY[50 + :m % 40] WHERE account_id = 'ce-t' || (1 + :u % 4);
\elif :e = 3
UPDATE ai_account_members SET account_id = 'ce-t' || (1 + :m % 4) WHERE user_id = 'ce-' || :u;
\elif :e = 4
UPDATE ai_plans SET daily_limit = daily_limit + 1 WHERE plan = 'ce';
\elif :e = 5
UPDATE ai_model_prices SET input_usd_per_mtok = 0.1 + (:m % 3) * 0.01 WHERE model = 'ce-m' || :m;
\elif :e = 6
BEGIN;
DELETE FROM ai_rules WHERE rule_id = :m;
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value)
    VALUES (:m, 'plan', 'ce', 'ce-m' || :m, 'cents', 'day', 100000);
COMMIT;
\elif :e = 7
SELECT count(*) FROM ai_limit_state('ce-' || :u, 'ce');
\elif :e = 8
SELECT count(*) FROM ai_explain_limits('ce-' || :u, model => 'ce-m' || :m, plan => 'ce');
\else
SELECT coalesce(reservation_id, 0) AS rid FROM ai_check_limit('ce-' || :u, 'ce',
    model => 'ce-m' || :m, input_tokens => 100, max_output_tokens => 100) \gset
\sleep 2 ms
SELECT ce_record(:u, :m, :rid);
\endif
}
	});

ok(!$node->log_contains(qr/terminated by signal|server process .* was terminated/),
	'no backend crashed');
is(sql($node, 'SELECT pg_postmaster_start_time()'), $started,
	'the server never restarted its connections');
cmp_ok(sql($node, 'SELECT count(*) FROM ai_usage'), '>', 100, 'the clients recorded calls');
is(sql($node, 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared counters are consistent');

done_testing();
