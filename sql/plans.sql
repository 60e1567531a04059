--
-- plans: which plan a check uses
--

-- with a plan named, that plan
SELECT allowed, remaining FROM ai_check_limit('plan-a', 'pro');
SELECT allowed, remaining FROM ai_check_limit('plan-a', 'enterprise');

-- without one, a user with no row in ai_user_plans is on free
SELECT allowed, remaining FROM ai_check_limit('plan-b');
SELECT allowed, remaining FROM ai_check_limit('plan-b', NULL);

-- ai_user_plans assigns a plan
INSERT INTO ai_user_plans VALUES ('plan-c', 'pro');
SELECT allowed, remaining FROM ai_check_limit('plan-c');

-- a change of plan takes effect at the next check
UPDATE ai_user_plans SET plan = 'enterprise' WHERE user_id = 'plan-c';
SELECT allowed, remaining FROM ai_check_limit('plan-c');
DELETE FROM ai_user_plans WHERE user_id = 'plan-c';
SELECT allowed, remaining FROM ai_check_limit('plan-c');

-- a plan's user must reference a plan that exists
INSERT INTO ai_user_plans VALUES ('plan-d', 'platinum');

-- a plan that is not in ai_plans is refused
SELECT * FROM ai_check_limit('plan-e', 'platinum');

-- new plans work at once, also inside the transaction that adds them
BEGIN;
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('team', 2, 4);
SELECT allowed, error, limited_by FROM checks('plan-f', 'team', 3);
ROLLBACK;
SELECT * FROM ai_check_limit('plan-f', 'team');

-- NULL limits mean no limit for that layer; remaining is NULL without a daily limit
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('unmetered', NULL, NULL);
SELECT count(*) FILTER (WHERE allowed) AS allowed, count(remaining) AS with_remaining,
       count(*) FILTER (WHERE reset_at = next_midnight()) AS reset_at_midnight
FROM checks('plan-g', 'unmetered', 50);

-- requests are counted per day under every plan, so a new limit applies to
-- what was already used today
UPDATE ai_plans SET daily_limit = 52 WHERE plan = 'unmetered';
SELECT allowed, remaining FROM checks('plan-g', 'unmetered', 3);

-- a seeded plan never edited is a default: inserting its name replaces it
-- (this is what lets a dump restore edited seeds)
INSERT INTO ai_plans VALUES ('enterprise', 200, '1 minute', 20000, NULL);
SELECT * FROM ai_plans WHERE plan = 'enterprise';
-- once edited it is a plan like any other
INSERT INTO ai_plans VALUES ('enterprise', 300, '1 minute', 30000, NULL);
UPDATE ai_plans SET burst_limit = 100, daily_limit = 10000 WHERE plan = 'enterprise';
SELECT plan, ai_plan_is_seed(p) AS as_seeded FROM ai_plans p ORDER BY plan;

-- a change to a plan or a price reaches this session's next statement, and
-- leaves again when its transaction or savepoint rolls back (rules.sql: a rule)
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('undo', NULL, 5);
INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok) VALUES ('undo-model', 10, 10);
BEGIN;
SAVEPOINT s;
UPDATE ai_plans SET daily_limit = 1 WHERE plan = 'undo';
SELECT allowed, remaining FROM ai_check_limit('plan-undo', 'undo');
UPDATE ai_model_prices SET output_usd_per_mtok = 1000 WHERE model = 'undo-model';
SELECT ai_record_usage('plan-undo', 'undo-model', 0, 1000) AS cost_at_new_price;
ROLLBACK TO SAVEPOINT s;
SELECT allowed, remaining FROM ai_check_limit('plan-undo', 'undo');
SELECT ai_record_usage('plan-undo', 'undo-model', 0, 1000) AS cost_at_old_price;
COMMIT;
BEGIN;
DELETE FROM ai_plans WHERE plan = 'undo';
SELECT error FROM ai_check_limit('plan-undo', 'undo');
ROLLBACK;
SELECT allowed, remaining FROM ai_check_limit('plan-undo', 'undo');
