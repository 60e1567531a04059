-- The article "The Rate Limit That Protects Your AI Budget", played against
-- ai_ratelimit.  Run by scripts/demo.sh on a throwaway server.
\set QUIET on
\pset footer off
\set ON_ERROR_STOP on
CREATE EXTENSION ai_ratelimit;

\echo
\echo '== 1. Plan-based limits (the article''s AI_LIMITS), seeded in ai_plans'
SELECT plan, burst_limit, burst_window, daily_limit, monthly_budget_cents FROM ai_plans ORDER BY burst_limit;

\echo
\echo '== 2. Burst: user-42 on the free plan fires 6 requests in the same minute'
\echo '   SELECT * FROM ai_check_limit(''user-42'', ''free'');   -- six times'
SELECT n AS call, c.allowed, c.error, c.retry_after, c.remaining, c.limited_by
FROM generate_series(1, 6) n
CROSS JOIN LATERAL (SELECT * FROM ai_check_limit('user-42' || repeat('', n), 'free')) c;
\echo '   The 6th is refused. retry_after is when a retry will succeed (the article hard-codes 60).'

\echo
\echo '== 3. The same refusal as an error, so the caller''s transaction aborts (ai_enforce_limit)'
\set ON_ERROR_STOP off
\set VERBOSITY default
SELECT * FROM ai_enforce_limit('user-42', 'free');
\set ON_ERROR_STOP on

\echo
\echo '== 4. Daily: user-7 on free makes 21 calls today'
\echo '   (the demo lifts the free burst limit for a moment so it need not wait four minutes)'
UPDATE ai_plans SET burst_limit = NULL WHERE plan = 'free';
SELECT count(*) FILTER (WHERE c.allowed) AS allowed_calls,
       max(c.error) AS refusal_message,
       max(c.retry_after) AS retry_after_s,
       max(c.reset_at) FILTER (WHERE NOT c.allowed) AS resets_at
FROM generate_series(1, 21) n
CROSS JOIN LATERAL (SELECT * FROM ai_check_limit('user-7' || repeat('', n), 'free')) c;
UPDATE ai_plans SET burst_limit = 5 WHERE plan = 'free';
\echo '   retry_after counts to midnight in ai_ratelimit.timezone (the article hard-codes 86400).'

\echo
\echo '== 5. Token-based tracking: real token counts, priced exactly from ai_model_prices'
SELECT * FROM ai_model_prices ORDER BY model;
SELECT 'claude-sonnet-4-6' AS model, 812 AS input_tokens, 1045 AS output_tokens,
       ai_record_usage('user-42', 'claude-sonnet-4-6', 812, 1045) AS cost_cents
UNION ALL
SELECT 'gpt-4o', 1000, 1000, ai_record_usage('user-42', 'gpt-4o', 1000, 1000)
UNION ALL
SELECT 'claude-sonnet-4-6', 1000, 1000, ai_record_usage('user-42', 'claude-sonnet-4-6', 1000, 1000);
\echo '   No Math.ceil per call: 812 in + 1045 out on claude-sonnet-4-6 is 1.8111 cents, not 2.'
\echo '   A model without a price is charged at the ''*'' row, with a WARNING; its tokens are kept:'
SELECT ai_record_usage('user-42', 'brand-new-model', 500, 200) AS cost_cents;

\echo
\echo '== 6. The month''s spend'
SELECT ai_monthly_spend('user-42') AS cents_this_month;
SELECT user_id, day, model, calls, input_tokens, output_tokens, cost_cents
FROM ai_usage_daily WHERE user_id = 'user-42' ORDER BY model;

\echo
\echo '== 7. Monthly budget: a runaway script on a plan capped at $5 (500 cents) a month'
\echo '   Each call is checked with an estimate of 2 cents (reserved), then recorded at its real cost.'
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents)
VALUES ('capped', NULL, NULL, 500);
INSERT INTO ai_user_plans VALUES ('script-1', 'capped');
CREATE TEMP TABLE runaway AS
WITH RECURSIVE calls(n, allowed, error, reservation_id) AS (
    SELECT 0, true, NULL::text, NULL::bigint
    UNION ALL
    SELECT n + 1, c.allowed, c.error, c.reservation_id
    FROM calls, LATERAL (SELECT * FROM ai_check_limit('script-1' || repeat('', n), NULL, 2)) c
    WHERE calls.allowed AND n < 10000
)
SELECT n, allowed, error,
       CASE WHEN allowed THEN ai_record_usage('script-1', 'claude-sonnet-4-6', 1000, 1000, 0, reservation_id) END AS cost
FROM calls WHERE n > 0;
SELECT count(*) FILTER (WHERE allowed) AS calls_allowed,
       max(error) AS refusal,
       ai_monthly_spend('script-1') AS spent_cents,
       500 AS budget_cents
FROM runaway;
\echo '   Its next call (estimate 2 cents) is refused until the month ends:'
SELECT allowed, error, limited_by, retry_after, reset_at FROM ai_check_limit('script-1', NULL, 2);
\echo '   The script stopped at the cap: the spend never passes the budget, and the check'
\echo '   refuses before the money is spent, not after (the article checks after).'

\echo
\echo '== 8. Inside transactions: a check in a transaction that rolls back is given back'
BEGIN;
SELECT allowed, remaining FROM ai_check_limit('user-9', 'pro');
ROLLBACK;
SELECT allowed, remaining FROM ai_check_limit('user-9', 'pro');

\echo
\echo '== 9. Operating it: live counters per user, and why requests were refused'
SELECT user_id, plan, burst_used, daily_used, reserved_cents, month_spend_cents
FROM ai_ratelimit_status ORDER BY user_id;
SELECT plan, limited_by, requests FROM ai_ratelimit_stats ORDER BY plan NULLS LAST, limited_by NULLS FIRST;
