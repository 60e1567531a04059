--
-- limits: burst, daily and monthly budget, with the article's messages
--

-- burst: the 6th free call in a minute is refused, with the article's message
SELECT allowed, error, remaining, limited_by, reservation_id IS NULL AS no_reservation
FROM checks('burst-1', 'free', 7);

-- retry_after is exact: the window (60 s) plus at most one bucket (3 s),
-- rounded up, and reset_at is when the retry can succeed
SELECT retry_after BETWEEN 60 AND 63 AS retry_in_window,
       abs(extract(epoch FROM reset_at - clock_timestamp()) - retry_after) < 1.5 AS reset_matches
FROM ai_check_limit('burst-1', 'free');

-- the same for every plan, and the message names the plan and its numbers
SELECT error FROM checks('burst-2', 'pro', 31) WHERE NOT allowed;
SELECT count(*) FILTER (WHERE allowed) AS allowed, min(error) AS error
FROM checks('burst-3', 'enterprise', 101);

-- a window other than a minute is named in the message
INSERT INTO ai_plans (plan, burst_limit, burst_window, daily_limit)
VALUES ('short', 2, '2 seconds', NULL);
SELECT allowed, error, retry_after BETWEEN 2 AND 3 AS retry_in_window FROM checks('burst-4', 'short', 3);
-- the sliding window lets requests through again once it has passed
SELECT pg_sleep(2.3);
SELECT allowed FROM checks('burst-4', 'short', 3);

-- ai_peek_limit answers like a check and takes nothing
SELECT allowed, remaining FROM ai_peek_limit('burst-5', 'free');
SELECT allowed, remaining FROM ai_peek_limit('burst-5', 'free');
SELECT allowed, remaining FROM ai_check_limit('burst-5', 'free');
SELECT allowed, remaining FROM ai_peek_limit('burst-5', 'free');

-- daily: with the burst layer lifted, the 21st free call today is refused
UPDATE ai_plans SET burst_limit = NULL WHERE plan = 'free';
SELECT count(*) FILTER (WHERE allowed) AS allowed, min(remaining) AS last_remaining
FROM checks('daily-1', 'free', 20);
SELECT allowed, error, remaining, limited_by, reset_at = next_midnight() AS resets_at_midnight,
       abs(retry_after - extract(epoch FROM next_midnight() - clock_timestamp())) < 2 AS retry_to_midnight
FROM ai_check_limit('daily-1', 'free');
UPDATE ai_plans SET burst_limit = 5 WHERE plan = 'free';

-- a denied request takes nothing: burst-1 made 8 checks and 5 were allowed,
-- so 500 - 5 - 1 remain for its next request on the pro plan
SELECT remaining FROM ai_peek_limit('burst-1', 'pro');

-- ai_reset_limits forgets a user's burst and daily counts
SELECT ai_reset_limits('daily-1');
SELECT allowed, remaining FROM ai_check_limit('daily-1', 'free');

-- a rolled-back transaction gives back what its checks took
BEGIN;
SELECT count(*) FROM checks('rollback-1', 'free', 5);
ROLLBACK;
SELECT count(*) FILTER (WHERE allowed) AS allowed FROM checks('rollback-1', 'free', 6);
-- so does a rolled-back savepoint, while the rest of the transaction keeps its count
BEGIN;
SELECT allowed FROM ai_check_limit('rollback-2', 'free');
SAVEPOINT s;
SELECT count(*) FROM checks('rollback-2', 'free', 4);
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT remaining FROM ai_peek_limit('rollback-2', 'free');

-- ai_enforce_limit raises 53400 with the message and the retry time
DO $$
DECLARE
    st text; msg text; det text; hint text;
BEGIN
    PERFORM * FROM ai_enforce_limit('burst-1', 'free');
    RAISE EXCEPTION 'not reached';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            det = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    RAISE NOTICE 'sqlstate %, message "%", detail matches: %, hint: limited by %, limit %, used %, retryable %, retry_after as in detail: %',
        st, msg, (regexp_match(det, '^retry after (\d+) seconds$'))[1]::int BETWEEN 1 AND 63,
        hint::json->>'limited_by', hint::json->>'limit', hint::json->>'used', hint::json->>'retryable',
        (hint::json->>'retry_after') = (regexp_match(det, '^retry after (\d+) seconds$'))[1];
END $$;
-- the caller's transaction is aborted
BEGIN;
\set VERBOSITY terse
SELECT * FROM ai_enforce_limit('burst-1', 'free');
\set VERBOSITY default
SELECT 1;
ROLLBACK;
SELECT allowed, remaining FROM ai_enforce_limit('enforce-1', 'free');

-- a plan with a zero limit allows nothing, and no retry can succeed
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('suspended', 0, 10);
SELECT allowed, error, retry_after, limited_by, reset_at FROM ai_check_limit('zero-1', 'suspended');
SELECT * FROM ai_enforce_limit('zero-1', 'suspended');

-- monthly budget: spend plus reservations plus the estimate may not exceed it
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents)
VALUES ('capped', NULL, NULL, 10);
SELECT ai_record_usage('budget-1', 'claude-sonnet-4-6', 1000, 300);   -- 0.75 cents
SELECT allowed, reservation_id > 0 AS reserved FROM ai_check_limit('budget-1', 'capped', 4);
SELECT allowed, reservation_id > 0 AS reserved FROM ai_check_limit('budget-1', 'capped', 4);
-- 0.75 spent + 8 reserved + 4 would be 12.75 > 10: only requests in flight
-- stand in the way, so retry in 5 seconds (they expire only in 15 minutes)
SELECT allowed, error, limited_by, reservation_id, retry_after,
       abs(extract(epoch FROM reset_at - clock_timestamp()) - 5) < 1 AS reset_in_5s
FROM ai_check_limit('budget-1', 'capped', 4);
-- a smaller estimate still fits; no estimate reserves nothing
SELECT allowed, reservation_id IS NULL AS no_reservation FROM ai_check_limit('budget-1', 'capped', 0);
SELECT allowed, reservation_id AS resv FROM ai_check_limit('budget-1', 'capped', 1.25) \gset
SELECT :'allowed' AS allowed;
-- settling a reservation replaces the estimate with the real cost
SELECT ai_record_usage('budget-1', 'gpt-4o', 10000, 5000, 0, :resv);         -- 7.5 cents
-- 0.75 + 7.5 spent, 8 reserved: refused, even without an estimate
SELECT allowed, limited_by FROM ai_check_limit('budget-1', 'capped', 0.01);
SELECT allowed, limited_by FROM ai_check_limit('budget-1', 'capped');
-- a rolled-back check gives its reservation back
BEGIN;
SELECT ai_record_usage('budget-2', 'gpt-4o', 0, 0);
SELECT allowed FROM ai_check_limit('budget-2', 'capped', 10);
SELECT allowed, limited_by FROM ai_check_limit('budget-2', 'capped', 1);
ROLLBACK;
SELECT allowed, reservation_id > 0 AS reserved FROM ai_check_limit('budget-2', 'capped', 10);
-- once the month's spend itself is over the budget, a retry waits for next month
SELECT ai_record_usage('budget-3', 'claude-sonnet-4-6', 0, 10000);  -- 15 cents
SELECT allowed, error, limited_by,
       reset_at = (date_trunc('month', clock_timestamp() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC' AS resets_next_month,
       abs(retry_after - extract(epoch FROM reset_at - clock_timestamp())) < 2 AS retry_matches
FROM ai_check_limit('budget-3', 'capped');
-- layers are checked in order: a burst refusal reports burst even over budget
UPDATE ai_plans SET burst_limit = 1 WHERE plan = 'capped';
SELECT allowed, limited_by FROM ai_check_limit('budget-4', 'capped');
SELECT ai_record_usage('budget-4', 'claude-sonnet-4-6', 0, 10000);
SELECT allowed, limited_by FROM ai_check_limit('budget-4', 'capped');

-- a request refused by a later layer takes nothing from the earlier ones:
-- two allowed, the third refused by the daily limit ...
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('layers', 3, 2);
SELECT allowed, limited_by FROM checks('layers-1', 'layers', 3);
-- ... so with a higher daily limit the burst window still has one place left
UPDATE ai_plans SET daily_limit = 10 WHERE plan = 'layers';
SELECT allowed, limited_by FROM checks('layers-1', 'layers', 2);
-- and a budget refusal takes neither a burst place nor a daily count
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents) VALUES ('layers2', 2, 5, 1);
SELECT allowed, limited_by FROM ai_check_limit('layers-2', 'layers2', 5);
SELECT allowed, limited_by, remaining FROM checks('layers-2', 'layers2', 3);

-- unsettled reservations expire after ai_ratelimit.reservation_ttl
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents) VALUES ('ttl', NULL, NULL, 10);
SET ai_ratelimit.reservation_ttl = '1s';
SELECT allowed, reservation_id AS expiring FROM ai_check_limit('ttl-1', 'ttl', 10) \gset
SELECT :'allowed' AS allowed;
SELECT allowed, limited_by, retry_after FROM ai_check_limit('ttl-1', 'ttl', 1);
SELECT pg_sleep(1.2);
SELECT allowed, reservation_id > 0 AS reserved FROM ai_check_limit('ttl-1', 'ttl', 1);
RESET ai_ratelimit.reservation_ttl;
-- a reservation settled after it expired still records the usage, with a WARNING
-- (its text names the id, which differs at each run: the SQLSTATE is shown)
\set VERBOSITY sqlstate
SELECT ai_record_usage('ttl-1', 'gpt-4o', 0, 100, 0, :expiring) AS cost \gset
\set VERBOSITY default
SELECT :'cost' AS cost;

-- a prepared transaction could not give back its checks: refused
BEGIN;
SELECT allowed FROM ai_check_limit('prepared-1', 'pro');
PREPARE TRANSACTION 'ai-1';
SELECT count(*) FROM pg_prepared_xacts;
-- and its check was given back by the abort
SELECT remaining FROM ai_peek_limit('prepared-1', 'pro');
