--
-- bad input: a clear error with a 22xxx or 23xxx SQLSTATE, nothing recorded
--
-- the messages say what is wrong
SELECT * FROM ai_check_limit(NULL, 'free');
SELECT * FROM ai_check_limit(repeat('x', 1024 * 1024), 'free');
SELECT * FROM ai_check_limit('bad-0', 'free', 'NaN');
SELECT ai_record_usage('bad-0', 'gpt-4o', -1, 1);
SELECT ai_record_usage('bad-0', 'gpt-4o', 1, 2000000000);

-- each with its SQLSTATE
\set VERBOSITY sqlstate
-- user ids
SELECT * FROM ai_check_limit(NULL, 'free');
SELECT * FROM ai_check_limit('', 'free');
SELECT * FROM ai_check_limit(repeat('x', 1024 * 1024), 'free');
SELECT * FROM ai_check_limit(repeat('x', 257), 'free');
SELECT allowed FROM ai_check_limit(repeat('x', 256), 'free');
SELECT ai_record_usage(NULL, 'gpt-4o', 1, 1);
SELECT ai_record_usage('', 'gpt-4o', 1, 1);
SELECT ai_monthly_spend(NULL);
SELECT ai_monthly_spend('');
SELECT ai_reset_limits(NULL);
-- plans
SELECT * FROM ai_check_limit('bad-1', 'no-such-plan');
SELECT * FROM ai_check_limit('bad-1', '');
-- estimates
SELECT * FROM ai_check_limit('bad-1', 'free', 'NaN');
SELECT * FROM ai_check_limit('bad-1', 'free', -1);
SELECT * FROM ai_check_limit('bad-1', 'free', 'Infinity');
SELECT * FROM ai_check_limit('bad-1', 'free', '-Infinity');
-- a NULL estimate means none
SELECT allowed, reservation_id FROM ai_check_limit('bad-1', 'free', NULL);
-- models and token counts
SELECT ai_record_usage('bad-2', NULL, 1, 1);
SELECT ai_record_usage('bad-2', '', 1, 1);
SELECT ai_record_usage('bad-2', repeat('m', 300), 1, 1);
SELECT ai_record_usage('bad-2', repeat('m', 1024 * 1024), 1, 1);
SELECT ai_record_usage('bad-2', 'gpt-4o', -1, 1);
SELECT ai_record_usage('bad-2', 'gpt-4o', 1, -1);
SELECT ai_record_usage('bad-2', 'gpt-4o', 1, 1, -1);
SELECT ai_record_usage('bad-2', 'gpt-4o', NULL, 1);
SELECT ai_record_usage('bad-2', 'gpt-4o', 1000000001, 1);
SELECT ai_record_usage('bad-2', 'gpt-4o', 1, 9223372036854775807);
SELECT ai_record_usage('bad-2', 'gpt-4o', 1, 1, 0, 0);
SELECT ai_record_usage('bad-2', 'gpt-4o', 1, 1, 0, -5);
-- the largest allowed call is priced exactly
SELECT ai_record_usage('bad-3', 'claude-sonnet-4-6', 1000000000, 1000000000, 1000000000);
-- months
SELECT ai_monthly_spend('bad-2', 'infinity');
-- nothing of the refused calls was recorded
SELECT count(*) FROM ai_usage WHERE user_id IN ('bad-0', 'bad-1', 'bad-2');
SELECT remaining FROM ai_peek_limit('bad-1', 'free');

-- configuration: CHECK constraints refuse bad limits and prices
INSERT INTO ai_plans (plan, burst_limit) VALUES ('neg-burst', -1);
INSERT INTO ai_plans (plan, daily_limit) VALUES ('neg-daily', -5);
INSERT INTO ai_plans (plan, monthly_budget_cents) VALUES ('neg-budget', -1);
INSERT INTO ai_plans (plan, monthly_budget_cents) VALUES ('nan-budget', 'NaN');
INSERT INTO ai_plans (plan, monthly_budget_cents) VALUES ('inf-budget', 'Infinity');
INSERT INTO ai_plans (plan, burst_window) VALUES ('zero-window', '0');
INSERT INTO ai_plans (plan, burst_window) VALUES ('neg-window', '-1 minute');
INSERT INTO ai_plans (plan, burst_window) VALUES ('huge-window', '2 days');
INSERT INTO ai_plans (plan) VALUES ('');
INSERT INTO ai_plans (plan) VALUES (NULL);
INSERT INTO ai_plans (plan) VALUES ('capped');
INSERT INTO ai_model_prices VALUES ('neg-price', -1, 1, 0);
INSERT INTO ai_model_prices VALUES ('nan-price', 'NaN', 1, 0);
INSERT INTO ai_model_prices VALUES ('too-precise', 0.000001, 1, 0);
INSERT INTO ai_model_prices VALUES ('null-price', NULL, 1, 0);
INSERT INTO ai_user_plans VALUES ('', 'free');
INSERT INTO ai_user_plans VALUES ('bad-4', NULL);
INSERT INTO ai_user_plans VALUES ('bad-4', 'pro');
DELETE FROM ai_plans WHERE plan = 'pro';
\set VERBOSITY default
-- the server is unharmed
SELECT allowed FROM ai_check_limit('bad-5', 'free');
-- a user without a row in ai_user_plans is on 'free': without that plan the
-- error says so
BEGIN;
DELETE FROM ai_user_plans WHERE plan = 'free';
DELETE FROM ai_plans WHERE plan = 'free';
SELECT allowed FROM ai_check_limit('bad-6', NULL);
ROLLBACK;
SELECT allowed FROM ai_check_limit('bad-6', NULL);
