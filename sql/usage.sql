--
-- usage: exact prices, the usage log, the daily rollup and the month's spend
--

-- claude-sonnet-4-6 at $3 in, $15 out per million tokens:
-- 812 * 3 + 1045 * 15 = 18111 micro-dollars = 1.8111 cents, not rounded
SELECT ai_record_usage('usage-1', 'claude-sonnet-4-6', 812, 1045);
-- gpt-4o at $2.50 in, $10 out, $1.25 cached: 1000 in, 1000 out, 2000 cached
-- = 2500 + 10000 + 2500 micro-dollars = 1.5 cents
SELECT ai_record_usage('usage-1', 'gpt-4o', 1000, 1000, 2000);
-- a single token costs a fraction of a cent, kept exactly
SELECT ai_record_usage('usage-1', 'claude-sonnet-4-6', 1, 0);
SELECT ai_record_usage('usage-1', 'claude-sonnet-4-6', 0, 0, 1);
-- zero tokens cost nothing
SELECT ai_record_usage('usage-1', 'gpt-4o', 0, 0);

-- the month's spend is the exact sum
SELECT ai_monthly_spend('usage-1');
SELECT ai_monthly_spend('usage-1') = 1.8111 + 1.5 + 0.0003 + 0.00003 AS exact;

-- a model that is not listed is priced by '*' with a WARNING; the tokens are kept
SELECT ai_record_usage('usage-2', 'some-new-model', 1000, 1000, 1000);
SELECT model, priced_as, input_tokens, output_tokens, cached_input_tokens, cost_cents
FROM ai_usage WHERE user_id = 'usage-2';

-- a price change applies to the next call, not to recorded ones
UPDATE ai_model_prices SET output_usd_per_mtok = 12 WHERE model = 'gpt-4o';
SELECT ai_record_usage('usage-3', 'gpt-4o', 0, 1000);
UPDATE ai_model_prices SET output_usd_per_mtok = 10 WHERE model = 'gpt-4o';
SELECT ai_record_usage('usage-3', 'gpt-4o', 0, 1000);
SELECT cost_cents FROM ai_usage WHERE user_id = 'usage-3' ORDER BY id;

-- a model without a cached price charges cached tokens at the input price
INSERT INTO ai_model_prices VALUES ('in-house-llm', 0.12345, 0.5, NULL);
SELECT ai_record_usage('usage-4', 'in-house-llm', 1000, 1000, 1000);

-- the log row
SELECT user_id, model, priced_as, input_tokens, output_tokens, cached_input_tokens,
       cost_cents, reservation_id, day = (now() AT TIME ZONE 'UTC')::date AS today,
       created_at BETWEEN now() - interval '1 minute' AND clock_timestamp() AS recent
FROM ai_usage WHERE user_id = 'usage-1' ORDER BY id;

-- the per-day rollup
SELECT user_id, model, calls, input_tokens, output_tokens, cached_input_tokens, cost_cents
FROM ai_usage_daily WHERE user_id = 'usage-1' ORDER BY model;

-- the month's spend by month: this month, any day in it, and other months
SELECT ai_monthly_spend('usage-1', (now() AT TIME ZONE 'UTC')::date) = ai_monthly_spend('usage-1') AS same_month;
SELECT ai_monthly_spend('usage-1', date_trunc('month', now() AT TIME ZONE 'UTC')::date) = ai_monthly_spend('usage-1') AS first_day;
SELECT ai_monthly_spend('usage-1', (now() AT TIME ZONE 'UTC' - interval '1 month')::date) AS last_month;
SELECT ai_monthly_spend('usage-1', (now() AT TIME ZONE 'UTC' + interval '1 month')::date) AS next_month;
SELECT ai_monthly_spend('nobody') AS nobody;

-- usage recorded in a transaction that rolls back is gone, from the log and the spend
BEGIN;
SELECT ai_record_usage('usage-5', 'gpt-4o', 1000, 0);
SELECT ai_monthly_spend('usage-5');
ROLLBACK;
SELECT ai_monthly_spend('usage-5'), count(*) FROM ai_usage WHERE user_id = 'usage-5';

-- the budget check counts recorded spend
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents)
VALUES ('two-cents', NULL, NULL, 2);
SELECT allowed FROM ai_check_limit('usage-6', 'two-cents');
SELECT ai_record_usage('usage-6', 'claude-sonnet-4-6', 812, 1045);
-- 1.8111 spent: an estimate of 0.1890 would exceed 2 cents, 0.1889 fits exactly
SELECT allowed, limited_by FROM ai_check_limit('usage-6', 'two-cents', 0.1890);
SELECT allowed, limited_by FROM ai_check_limit('usage-6', 'two-cents', 0.1889);

-- the fallback price row cannot be removed
DELETE FROM ai_model_prices WHERE model = '*';
UPDATE ai_model_prices SET model = 'renamed' WHERE model = '*';
