--
-- models: a check that names the model and its token counts reserves at
-- least what the call can cost at the model's price (1.5)
--
INSERT INTO ai_plans (plan, monthly_budget_cents) VALUES ('m-cap', 10);
-- claude-sonnet-4-6 costs $3 in and $15 out per million tokens: 1,000 in
-- and at most 2,000 out can cost 0.3 + 3 = 3.3 cents
SELECT ai_estimate_cost('claude-sonnet-4-6', 1000, 2000);
SELECT allowed, reservation_id IS NOT NULL AS reserved
FROM ai_check_limit('m-1', 'm-cap', model => 'claude-sonnet-4-6',
                    input_tokens => 1000, max_output_tokens => 2000);
SELECT reserved_cents FROM ai_ratelimit_status WHERE user_id = 'm-1';
-- the larger of the caller's estimate and the price is held
SELECT allowed FROM ai_check_limit('m-2', 'm-cap', 5, model => 'claude-sonnet-4-6',
                                   input_tokens => 1000, max_output_tokens => 2000);
SELECT reserved_cents FROM ai_ratelimit_status WHERE user_id = 'm-2';
SELECT allowed FROM ai_check_limit('m-3', 'm-cap', 0.01, model => 'claude-sonnet-4-6',
                                   input_tokens => 1000, max_output_tokens => 2000);
SELECT reserved_cents FROM ai_ratelimit_status WHERE user_id = 'm-3';
-- a call that could cost more than the budget left is refused before it is made:
-- 3.3 held, 6.7 left, and 1,000 in with 5,000 out can cost 7.8
SELECT allowed, limited_by, limit_value, used, held, retryable
FROM ai_check_limit('m-1', 'm-cap', model => 'claude-sonnet-4-6',
                    input_tokens => 1000, max_output_tokens => 5000);
SELECT allowed FROM ai_check_limit('m-1', 'm-cap', model => 'claude-sonnet-4-6',
                                   input_tokens => 1000, max_output_tokens => 4000);
-- the call's tokens count for tokens per minute when no token estimate is given
INSERT INTO ai_plans (plan, tokens_per_minute) VALUES ('m-tpm', 2500);
SELECT allowed, limited_by FROM ai_check_limit('m-4', 'm-tpm', model => 'gpt-4o',
                                               input_tokens => 1000, max_output_tokens => 2000);
SELECT allowed, limited_by FROM ai_check_limit('m-4', 'm-tpm', model => 'gpt-4o',
                                               input_tokens => 1000, max_output_tokens => 1500);
-- a model without counts prices nothing; the forms of earlier versions work as before
SELECT allowed, reservation_id IS NULL AS none_held FROM ai_check_limit('m-5', 'm-cap', model => 'gpt-4o');
SELECT allowed FROM ai_check_limit('m-5', 'pro');
SELECT allowed FROM ai_check_limit('m-5', 'pro', 1.5);
SELECT allowed FROM ai_check_limit('m-5', 'pro', 1.5, 100);
-- bad input
SELECT allowed FROM ai_check_limit('m-6', 'pro', input_tokens => 10);
SELECT allowed FROM ai_check_limit('m-6', 'pro', model => '', input_tokens => 10);
SELECT allowed FROM ai_check_limit('m-6', 'pro', model => 'gpt-4o', input_tokens => -1);
SELECT allowed FROM ai_check_limit('m-6', 'pro', model => 'gpt-4o', max_output_tokens => 2000000000);
-- an unknown model: estimated as '*' with a WARNING, or refused
SELECT allowed FROM ai_check_limit('m-7', 'm-cap', model => 'no-such-model',
                                   input_tokens => 1000, max_output_tokens => 1000);
SET ai_ratelimit.unknown_model = 'refuse';
SELECT allowed FROM ai_check_limit('m-7', 'm-cap', model => 'no-such-model',
                                   input_tokens => 1000, max_output_tokens => 1000);
RESET ai_ratelimit.unknown_model;
-- ai_enforce_limit takes them too, and a refusal is its error
SELECT allowed FROM ai_enforce_limit('m-8', 'm-cap', model => 'claude-sonnet-4-6',
                                     input_tokens => 1000, max_output_tokens => 2000);
\set VERBOSITY terse
SELECT allowed FROM ai_enforce_limit('m-8', 'm-cap', model => 'claude-sonnet-4-6',
                                     input_tokens => 1000, max_output_tokens => 5000);
\set VERBOSITY default
-- nothing else held: every reservation above is in the status
SELECT user_id, reserved_cents, open_reservations FROM ai_ratelimit_status
WHERE user_id LIKE 'm-%' AND open_reservations > 0 ORDER BY user_id;
