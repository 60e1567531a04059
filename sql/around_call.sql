--
-- around_call: a failed call gives its estimate back at once, and a refusal
-- caused only by requests in flight says so
--
INSERT INTO ai_plans (plan, monthly_budget_cents) VALUES ('ten', 10);

-- five 2-cent checks whose AI calls failed: nothing is spent, all is held
CREATE TEMP TABLE held AS
SELECT reservation_id FROM checks('ac-1', 'ten', 5, 2);
SELECT count(reservation_id) AS reserved FROM held;
SELECT allowed, error, limited_by, retry_after FROM ai_check_limit('ac-1', 'ten', 2);
SELECT ai_monthly_spend('ac-1');
-- released: each gives its 2 cents back at once, and the user goes on
SELECT ai_release_reservation(reservation_id) AS released FROM held;
SELECT reserved_cents, open_reservations FROM ai_ratelimit_status WHERE user_id = 'ac-1';
SELECT allowed, reservation_id IS NOT NULL AS reserved FROM ai_check_limit('ac-1', 'ten', 2);
-- releasing again is a no-op with a NOTICE, never an error (the id is in
-- the NOTICE and differs at each run: the SQLSTATE is shown)
\set VERBOSITY sqlstate
SELECT ai_release_reservation(reservation_id) AS released FROM held LIMIT 1;
\set VERBOSITY default
-- an id that was never issued says so
SELECT ai_release_reservation(42);
-- a check that reserved nothing has a NULL id: releasing it does nothing
SELECT ai_release_reservation(NULL);

-- a release after the record is a no-op: the record settled it
SELECT reservation_id AS r FROM ai_check_limit('ac-2', 'ten', 2) \gset
SELECT ai_record_usage('ac-2', 'gpt-4o', 0, 1000, 0, :r);
\set VERBOSITY sqlstate
SELECT ai_release_reservation(:r);
\set VERBOSITY default
SELECT reserved_cents, open_reservations FROM ai_ratelimit_status WHERE user_id = 'ac-2';

-- a reservation that a record in an open transaction is settling stays
-- with that record: held again if it rolls back, and released then
SELECT reservation_id AS r FROM ai_check_limit('ac-3', 'ten', 4) \gset
BEGIN;
SELECT ai_record_usage('ac-3', 'gpt-4o', 0, 1000, 0, :r);
\set VERBOSITY sqlstate
SELECT ai_release_reservation(:r);
\set VERBOSITY default
ROLLBACK;
SELECT reserved_cents FROM ai_ratelimit_status WHERE user_id = 'ac-3';
SELECT ai_release_reservation(:r);
SELECT reserved_cents FROM ai_ratelimit_status WHERE user_id = 'ac-3';

-- a release is not undone by a rollback: the call did not happen either way
SELECT reservation_id AS r FROM ai_check_limit('ac-4', 'ten', 4) \gset
BEGIN;
SELECT ai_release_reservation(:r);
ROLLBACK;
SELECT count(*) AS rows_held FROM ai_ratelimit_status WHERE user_id = 'ac-4' AND reserved_cents > 0;

-- another user's or another database's id is not released by a check of this one
SELECT reservation_id AS r FROM ai_check_limit('ac-5', 'ten', 4) \gset
CREATE DATABASE ai_other;
\c ai_other
CREATE EXTENSION ai_ratelimit;
\set VERBOSITY sqlstate
SELECT ai_release_reservation(:r);
\c contrib_regression
\set VERBOSITY default
DROP DATABASE ai_other;
SELECT reserved_cents FROM ai_ratelimit_status WHERE user_id = 'ac-5';
SELECT ai_release_reservation(:r);

-- the message tells a budget held by requests in flight from one spent
SELECT allowed, reservation_id AS ac6_resv FROM ai_check_limit('ac-6', 'ten', 8) \gset
SELECT :'allowed' AS allowed;
SELECT allowed, error, retry_after FROM ai_check_limit('ac-6', 'ten', 4);
SELECT ai_record_usage('ac-6', 'gpt-4o', 0, 8000, 0, :ac6_resv);
SELECT allowed, error, retry_after IS NOT NULL AND retry_after > 5 AS waits_for_next_month
FROM ai_check_limit('ac-6', 'ten', 4);

-- on a standby it would refuse with 25006 like every call that counts
-- (t/011_standby.pl); it is for the application role, not PUBLIC
SELECT has_function_privilege('public', 'ai_release_reservation(bigint)', 'EXECUTE') AS public_may_release;

-- refusals a program can act on: the layer, its limit, what is used and
-- held, when it resets, retry_after, and whether a retry can succeed
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('ac-burst', 2, NULL), ('ac-daily', NULL, 1);
SELECT allowed, limited_by, limit_value, used, held, retryable FROM checks('ac-7', 'ac-burst', 3);
SELECT allowed, limited_by, limit_value, used, held, retryable,
       reset_at = next_midnight() AS resets_at_midnight FROM checks('ac-8', 'ac-daily', 2);
-- budget: held by requests in flight (retry soon) or spent (not before next month)
SELECT allowed, reservation_id AS ac9_resv FROM ai_check_limit('ac-9', 'ten', 6) \gset
SELECT :'allowed' AS allowed;
SELECT allowed, limited_by, limit_value, used, held, retryable, retry_after
FROM ai_check_limit('ac-9', 'ten', 6);
SELECT ai_record_usage('ac-9', 'gpt-4o', 0, 9000, 0, :ac9_resv);
SELECT allowed, limited_by, limit_value, used, held, retryable
FROM ai_check_limit('ac-9', 'ten', 2);
-- a budget of 0 cuts the user off, with or without an estimate, for good
INSERT INTO ai_plans (plan, monthly_budget_cents) VALUES ('ac-zero', 0);
SELECT allowed, error, limited_by, retry_after, retryable FROM ai_check_limit('ac-10', 'ac-zero');
SELECT allowed, error, limited_by, retry_after, retryable FROM ai_check_limit('ac-10', 'ac-zero', 1);
-- a block says it is a block, and no retry is worth making
INSERT INTO ai_user_limits (user_id, blocked_until) VALUES ('ac-11', 'infinity');
SELECT allowed, error, limited_by, limit_value, retry_after, retryable FROM ai_check_limit('ac-11', 'pro');
-- an allowed check has none of these
SELECT allowed, limit_value, used, held, retryable FROM ai_check_limit('ac-12', 'pro');

-- ai_enforce_limit: the same facts in the error, for drivers: SQLSTATE
-- 53400, the message, the retry time in DETAIL, the layer as the constraint
-- name, and a JSON object as HINT
CREATE FUNCTION enforce_facts(u text, p text, est numeric DEFAULT 0)
RETURNS TABLE (state text, message text, detail text, layer text, hint json)
LANGUAGE plpgsql AS $$
DECLARE
    h text;
BEGIN
    PERFORM ai_enforce_limit(u, p, est);
    RETURN NEXT;
EXCEPTION WHEN configuration_limit_exceeded THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
        detail = PG_EXCEPTION_DETAIL, layer = CONSTRAINT_NAME, h = PG_EXCEPTION_HINT;
    hint := h::json;
    RETURN NEXT;
END $$;
SELECT state, message, detail ~ '^retry after \d+ seconds$' AS detail_says_when, layer,
       hint->>'limited_by' AS limited_by, hint->>'limit' AS lim,
       hint->>'used' AS used, hint->>'held' AS held,
       hint->>'retry_after' = (regexp_match(detail, '\d+'))[1] AS retry_after_as_detail,
       hint->>'retryable' AS retryable,
       (hint->>'reset_at')::timestamptz = next_midnight() AS resets_at_midnight
FROM enforce_facts('ac-8', 'ac-daily');
SELECT state, detail, layer, hint->>'retryable' AS retryable, hint->>'retry_after' AS retry_after,
       hint->>'limit' AS lim FROM enforce_facts('ac-11', 'pro');
SELECT state, message, layer, hint->>'used' AS used, hint->>'held' AS held, hint->>'retryable' AS retryable
FROM enforce_facts('ac-9', 'ten', 2);
SELECT state IS NULL AS allowed FROM enforce_facts('ac-12', 'pro');

-- ai_limit_state: every limit of a user now, counting nothing, for
-- rate-limit headers (the application role needs no configuration table)
INSERT INTO ai_plans (plan, burst_limit, burst_window, daily_limit, monthly_budget_cents, tokens_per_minute)
VALUES ('ac-all', 10, '1 minute', 100, 50, 100000);
SELECT allowed FROM checks('ac-13', 'ac-all', 3);
SELECT allowed, reservation_id AS ac13_resv FROM ai_check_limit('ac-13', 'ac-all', 20) \gset
SELECT :'allowed' AS allowed;
SELECT ai_record_usage('ac-13', 'gpt-4o', 0, 5000, 0, :ac13_resv);
SELECT allowed FROM ai_check_limit('ac-13', 'ac-all', 7);
SELECT layer, limit_value, used, held, remaining,
       CASE WHEN layer = 'monthly_budget'
            THEN window_seconds = extract(epoch FROM date_trunc('month', clock_timestamp() AT TIME ZONE 'UTC')
                                          + interval '1 month' - date_trunc('month', clock_timestamp() AT TIME ZONE 'UTC'))
            ELSE window_seconds IN (60, 86400) END AS window_ok,
       CASE layer WHEN 'daily' THEN reset_at = next_midnight()
                  WHEN 'monthly_budget' THEN reset_at = (date_trunc('month', clock_timestamp() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC'
                  -- the oldest counted bucket leaves: 3 s buckets for a minute of
                  -- requests, 20 s buckets for a minute of tokens
                  WHEN 'burst' THEN reset_at > clock_timestamp() + interval '57 seconds'
                                    AND reset_at <= clock_timestamp() + interval '63 seconds'
                  WHEN 'tokens' THEN reset_at > clock_timestamp() + interval '57 seconds'
                                     AND reset_at <= clock_timestamp() + interval '80 seconds' END AS reset_ok
FROM ai_limit_state('ac-13', 'ac-all');
-- it counted nothing, and a user with no counters gets its limits, all unused
SELECT used FROM ai_limit_state('ac-13', 'ac-all') WHERE layer = 'daily';
SELECT layer, limit_value, used, remaining, reset_at IS NULL AS nothing_to_reset
FROM ai_limit_state('ac-14', 'ac-all') WHERE layer <> 'daily' AND layer <> 'monthly_budget';
SELECT count(*) AS counters FROM ai_ratelimit_status WHERE user_id = 'ac-14';
-- the user's own plan and block, as a check would apply them
SELECT layer, limit_value, remaining, reset_at IS NULL AS no_reset_time FROM ai_limit_state('ac-11');
-- the headers an application sends, built from it (README)
SELECT 'RateLimit-Policy: ' || string_agg(format('"%s";q=%s;w=%s', layer, limit_value, window_seconds), ', ')
       AS policy_header
FROM ai_limit_state('ac-13', 'ac-all') WHERE layer IN ('burst', 'daily');
SELECT policy, rate ~ '^RateLimit: "burst";r=5;t=\d+, "daily";r=95;t=\d+$' AS rate_header_form
FROM (SELECT 'RateLimit-Policy: ' || string_agg(format('"%s";q=%s;w=%s', layer, limit_value, window_seconds), ', ') AS policy,
             'RateLimit: ' || string_agg(format('"%s";r=%s;t=%s', layer, remaining,
                              coalesce(ceil(extract(epoch FROM reset_at - now()))::int, 0)), ', ') AS rate
      FROM ai_limit_state('ac-13', 'ac-all') WHERE layer IN ('burst', 'daily')) h;

-- prompt-cache writes are priced exactly: the seeds carry the vendors'
-- multipliers (Anthropic: 1.25x input for 5-minute writes, 2x for 1-hour)
SELECT model, input_usd_per_mtok, cached_input_usd_per_mtok, cache_write_usd_per_mtok,
       cache_write_1h_usd_per_mtok
FROM ai_model_prices WHERE model IN ('claude-sonnet-4-6', 'gpt-4o', '*') ORDER BY model;
-- (1,000 x 3 + 500 x 15 + 2,000 x 0.30 + 10,000 x 3.75 + 4,000 x 6) / 10^4 = 7.26 cents
SELECT ai_record_usage('ac-15', 'claude-sonnet-4-6', 1000, 500, 2000, NULL, 10000, 4000);
-- a price without cache writes bills them as input: 10,000 x 2.50 / 10^4
SELECT ai_record_usage('ac-15', 'gpt-4o', 0, 0, 0, NULL, 10000, 0);
-- the 6-argument form is unchanged and not ambiguous
SELECT ai_record_usage('ac-15', 'gpt-4o', 1000, 0);
SELECT model, cache_write_tokens, cache_write_1h_tokens, cost_cents FROM ai_usage
WHERE user_id = 'ac-15' ORDER BY id;
SELECT model, calls, cache_write_tokens, cache_write_1h_tokens, cost_cents FROM ai_usage_daily
WHERE user_id = 'ac-15' ORDER BY model;
-- retention keeps them in the per-day totals
INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
                      cached_input_tokens, cost_cents, cache_write_tokens, cache_write_1h_tokens)
VALUES (now() - interval '40 days', ((now() - interval '40 days') AT TIME ZONE 'UTC')::date,
        'ac-16', 'claude-sonnet-4-6', 'claude-sonnet-4-6', 0, 0, 0, 6, 8000, 1000);
SELECT ai_purge_usage('30 days');
SELECT calls, cache_write_tokens, cache_write_1h_tokens, cost_cents FROM ai_usage_archive WHERE user_id = 'ac-16';
SELECT calls, cache_write_tokens, cache_write_1h_tokens, cost_cents FROM ai_usage_daily WHERE user_id = 'ac-16';
-- bad counts are refused like the other token counts
SELECT ai_record_usage('ac-15', 'gpt-4o', 0, 0, 0, NULL, -1, 0);
SELECT ai_record_usage('ac-15', 'gpt-4o', 0, 0, 0, NULL, 0, 1000000001);

-- a model without a price: a WARNING and the '*' price (the default), or,
-- with ai_ratelimit.unknown_model = refuse, an ERROR and nothing recorded
SET ai_ratelimit.unknown_model = 'refuse';
SELECT ai_record_usage('ac-17', 'gpt-4o-mnii', 1000, 1000);
SELECT count(*) AS recorded FROM ai_usage WHERE user_id = 'ac-17';
RESET ai_ratelimit.unknown_model;
SELECT ai_record_usage('ac-17', 'gpt-4o-mnii', 1000, 1000);
SELECT priced_as FROM ai_usage WHERE user_id = 'ac-17';

-- the most a call can cost before it is made, from the price table: the
-- estimate for a check (900 input tokens at $3, up to 1,024 output at $15)
SELECT ai_estimate_cost('claude-sonnet-4-6', 900, 1024);
SELECT ai_estimate_cost('no-such-model', 1000, 1000);
SELECT ai_estimate_cost('gpt-4o', -1, 10);
