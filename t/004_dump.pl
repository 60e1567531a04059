# pg_dump and restore into a new database keep edited seed plans, added
# plans, user plans, prices and all usage, and the restore runs without a
# single error.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'ai_ratelimit'");
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION ai_ratelimit;
UPDATE ai_plans SET burst_limit = 60, monthly_budget_cents = 5000 WHERE plan = 'pro';  -- edited seed
DELETE FROM ai_plans WHERE plan = 'enterprise';                                       -- removed seed
DELETE FROM ai_model_prices WHERE model = 'claude-sonnet-4-6';                        -- removed seed price
INSERT INTO ai_model_prices VALUES ('claude-sonnet-4-6', 3, 15, 0.25);                -- and added again, edited
INSERT INTO ai_plans VALUES ('team', 50, '30 seconds', 2000, 20000);                  -- added plan
INSERT INTO ai_user_plans VALUES ('alice', 'pro'), ('bob', 'team'), ('carol', 'free');
UPDATE ai_model_prices SET output_usd_per_mtok = 12 WHERE model = 'gpt-4o';           -- edited seed price
INSERT INTO ai_model_prices VALUES ('claude-haiku', 1, 5, 0.1);                       -- added price
INSERT INTO ai_rules (scope, scope_id, model, metric, "window", max_value, note) VALUES  -- rules
    ('plan', 'pro', 'claude-*', 'cents', 'day', 40, 'model budget'),
    ('user', 'bob', 'gpt-4o', 'requests', 'hour', 30, NULL);
INSERT INTO ai_accounts (account_id, parent_id, name) VALUES                          -- accounts
    ('acme', NULL, 'Acme'), ('acme-a', 'acme', 'Team A'), ('acme-b', 'acme', 'Team B');
UPDATE ai_accounts SET name = 'Acme Inc.' WHERE account_id = 'acme';                  -- a parent after its children
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES
    ('acme-a', 'alice', true), ('acme-b', 'alice', false), ('acme-b', 'bob', true);
INSERT INTO ai_rules (scope, scope_id, member_id, model, metric, "window", max_value) VALUES  -- shared budgets
    ('account', 'acme', NULL, '*', 'cents', 'month', 1000),
    ('member', 'acme-b', 'bob', '*', 'requests', 'day', 500);
SELECT ai_record_usage(u, m, 1000 * g, 500 * g, 10 * g)
FROM unnest(ARRAY['alice', 'bob', 'carol']) u,
     unnest(ARRAY['claude-sonnet-4-6', 'gpt-4o', 'claude-haiku', 'unknown-model']) m,
     generate_series(1, 5) g;
});

my $snapshot = q{
SELECT 'plans', string_agg(format('%s', p), ';' ORDER BY plan) FROM ai_plans p
UNION ALL SELECT 'user_plans', string_agg(format('%s', u), ';' ORDER BY user_id) FROM ai_user_plans u
UNION ALL SELECT 'prices', string_agg(format('%s', m), ';' ORDER BY model) FROM ai_model_prices m
UNION ALL SELECT 'rules', string_agg(format('%s', r), ';' ORDER BY rule_id) FROM ai_rules r
UNION ALL SELECT 'usage', count(*) || ' rows, ' || sum(cost_cents) || ' cents, ids ' || min(id) || '-' || max(id) FROM ai_usage
UNION ALL SELECT 'daily', string_agg(format('%s', d), ';' ORDER BY user_id, model) FROM ai_usage_daily d
UNION ALL SELECT 'spend', string_agg(ai_monthly_spend(u)::text, ',' ORDER BY u) FROM unnest(ARRAY['alice', 'bob', 'carol']) u
UNION ALL SELECT 'accounts', string_agg(format('%s %s %s', account_id, parent_id, name), ';' ORDER BY account_id) FROM ai_accounts
UNION ALL SELECT 'members', string_agg(format('%s %s %s', account_id, user_id, is_default), ';' ORDER BY account_id, user_id) FROM ai_account_members
UNION ALL SELECT 'account spend', string_agg(a || ' ' || ai_account_spend(a), ',' ORDER BY a) FROM unnest(ARRAY['acme', 'acme-a', 'acme-b']) a
};
my $before = $node->safe_psql('postgres', $snapshot);

foreach my $format ('custom', 'plain')
{
	my $db = "restored_$format";
	my $file = $node->basedir . "/dump.$format";
	$node->command_ok([ 'pg_dump', '-F', substr($format, 0, 1), '-f', $file, '-d', $node->connstr('postgres') ],
		"pg_dump ($format)");
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	my ($stdout, $stderr);
	my $ok;
	if ($format eq 'custom')
	{
		$ok = IPC::Run::run([ 'pg_restore', '--exit-on-error', '-d', $node->connstr($db), $file ],
			'>', \$stdout, '2>', \$stderr);
	}
	else
	{
		$ok = IPC::Run::run([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr($db), '-f', $file ],
			'>', \$stdout, '2>', \$stderr);
	}
	ok($ok, "restore ($format) succeeds");
	is($stderr, '', "restore ($format) prints no error or warning");

	my $after = $node->safe_psql($db, $snapshot);
	is($after, $before, "restore ($format): plans, user plans, prices, rules, usage, rollup, spend, accounts, members and account spend are identical");
	# the rules bind in the restored database, from the restored usage: what
	# alice spent on claude-* today (her Sonnet and Haiku calls) counts, and
	# a cent more than is left of the 40 is refused
	is($node->safe_psql($db, q{
		WITH s AS (SELECT sum(cost_cents) AS spent FROM ai_usage
		           WHERE user_id = 'alice' AND model LIKE 'claude-%')
		SELECT c.allowed::text || ' ' || (c.used = s.spent) || ' ' || c.limited_by
		FROM s, ai_check_limit('alice', 'pro', 40 - s.spent + 0.01, model => 'claude-haiku') c}),
		'false true rule', "restore ($format): a model budget binds from the restored usage");
	# the organisation's budget binds from the restored usage of both teams
	is($node->safe_psql($db, q{
		WITH s AS (SELECT ai_account_spend('acme') AS spent)
		SELECT c.allowed::text || ' ' || (c.used = s.spent) || ' ' || c.limited_by
		FROM s, ai_check_limit('bob', 'team', 1000 - s.spent + 0.01) c}),
		'false true account', "restore ($format): an organisation's budget binds from the restored usage");
	is($node->safe_psql($db, "SELECT nextval('ai_rules_rule_id_seq') > 4"), 't',
		"restore ($format): rule ids continue after the restored ones");

	# the restored database goes on: new usage gets new ids, checks work
	is($node->safe_psql($db, q{
		SELECT ai_record_usage('alice', 'gpt-4o', 1000, 0);
		SELECT id FROM ai_usage ORDER BY id DESC LIMIT 1}),
		"0.25\n61", "restore ($format): usage ids continue after the restored ones");
	is($node->safe_psql($db, "SELECT allowed, remaining FROM ai_check_limit('alice')"),
		't|499', "restore ($format): alice is still on the edited pro plan");
	is($node->safe_psql($db, "SELECT count(*) FROM ai_plans WHERE plan = 'enterprise'"),
		'0', "restore ($format): a removed seed plan stays removed");
}

$node->stop;
done_testing();
