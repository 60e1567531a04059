--
-- operations: monitoring views, budget alerts, per-user overrides and
-- blocks, tokens per minute, retention
--

-- ai_ratelimit_status: one row per live user of this database
SELECT ai_reset_limits('ops-1');
-- the oldest place leaves when its bucket (3 s of a minute) has wholly
-- left the window: after the first check's time plus a minute, at most a
-- bucket later
SELECT clock_timestamp() AS first_check \gset
SELECT count(*) FROM checks('ops-1', 'pro', 3);
SELECT clock_timestamp() AS last_check \gset
SELECT user_id, user_id_truncated, plan, burst_used,
       burst_resets_at > :'first_check'::timestamptz + interval '60 seconds'
       AND burst_resets_at <= :'last_check'::timestamptz + interval '63 seconds' AS resets_in_a_minute,
       daily_used, tokens_last_minute, reserved_cents, open_reservations, in_flight_cents
FROM ai_ratelimit_status WHERE user_id = 'ops-1';
-- ids are kept whole up to 40 bytes: a UUID or an e-mail address finds its row
SELECT allowed FROM ai_check_limit('f47ac10b-58cc-4372-a567-0e02b3c479d5', 'pro');
SELECT allowed FROM ai_check_limit('ada.lovelace@analytical-engines.example', 'pro');
SELECT user_id, user_id_truncated, daily_used FROM ai_ratelimit_status
WHERE user_id IN ('f47ac10b-58cc-4372-a567-0e02b3c479d5', 'ada.lovelace@analytical-engines.example')
ORDER BY user_id;
-- a longer id is shown by its first 40 bytes
SELECT allowed FROM ai_check_limit('ops-a-very-long-user-id-0123456789-and-then-some-more', 'pro');
SELECT user_id, user_id_truncated FROM ai_ratelimit_status WHERE user_id LIKE 'ops-a-very%';
-- a user whose spend is not cached (no budget in 'pro') shows the spend in the tables
SELECT allowed FROM ai_check_limit('ops-spend', 'pro');
INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
                      cached_input_tokens, cost_cents)
VALUES (now(), (now() AT TIME ZONE current_setting('ai_ratelimit.timezone'))::date,
        'ops-spend', 'x', 'x', 0, 0, 0, 12.5),
       (now(), (now() AT TIME ZONE current_setting('ai_ratelimit.timezone'))::date,
        'ops-spend', 'x', 'x', 0, 0, 0, 0.25);
SELECT month_spend_cents FROM ai_ratelimit_status WHERE user_id = 'ops-spend';
SELECT month_spend_cents FROM ai_ratelimit_status WHERE user_id = 'ops-1';
-- reservations and in-flight costs show up as they happen
SELECT allowed, reservation_id AS ops2_resv FROM ai_check_limit('ops-2', 'ttl', 2.5) \gset
SELECT :'allowed' AS allowed;
BEGIN;
SELECT ai_record_usage('ops-2', 'gpt-4o', 0, 1000, 0, :ops2_resv);
SELECT reserved_cents, open_reservations, in_flight_cents, month_spend_cents, tokens_last_minute
FROM ai_ratelimit_status WHERE user_id = 'ops-2';
COMMIT;
SELECT reserved_cents, open_reservations, in_flight_cents, month_spend_cents
FROM ai_ratelimit_status WHERE user_id = 'ops-2';

-- ai_ratelimit_stats: requests by plan and outcome since the last reset
SELECT clock_timestamp() AS before_reset \gset
SELECT ai_ratelimit_reset_stats();
SELECT * FROM ai_ratelimit_stats WHERE plan IS NOT NULL;
SELECT count(*) FROM checks('ops-3', 'free', 7);
SELECT allowed FROM ai_check_limit('ops-3', 'capped');
SELECT plan, limited_by, requests,
       since >= :'before_reset'::timestamptz AND since <= clock_timestamp() AS since_reset
FROM ai_ratelimit_stats ORDER BY plan NULLS LAST, limited_by NULLS FIRST;

-- per-user overrides: a column that is not NULL replaces the plan's limit
INSERT INTO ai_user_limits (user_id, burst_limit, daily_limit, note)
VALUES ('ops-4', 2, 3, 'trial account');
SELECT allowed, limited_by, error, remaining FROM checks('ops-4', 'pro', 3);
UPDATE ai_user_limits SET burst_limit = NULL WHERE user_id = 'ops-4';
SELECT allowed, limited_by, error, remaining FROM checks('ops-4', 'pro', 2);
-- the plan's name stays in the message; the numbers are the user's
DELETE FROM ai_user_limits WHERE user_id = 'ops-4';
SELECT allowed, remaining FROM ai_check_limit('ops-4', 'pro');

-- blocks: honoured by every check, with their own limited_by and message
INSERT INTO ai_user_limits (user_id, blocked_until, note)
VALUES ('ops-5', 'infinity', 'abuse report #17');
SELECT allowed, error, retry_after, limited_by, reset_at FROM ai_check_limit('ops-5', 'enterprise');
\set VERBOSITY terse
SELECT * FROM ai_enforce_limit('ops-5', 'enterprise');
\set VERBOSITY default
UPDATE ai_user_limits SET blocked_until = now() + interval '1 hour' WHERE user_id = 'ops-5';
SELECT allowed, error LIKE 'AI access blocked for this user until %' AS message, limited_by,
       retry_after BETWEEN 3590 AND 3600 AS retry_in_an_hour
FROM ai_check_limit('ops-5', 'enterprise');
-- the message names the end to the second (rounded up) in ai_ratelimit.timezone;
-- reset_at keeps the exact time
UPDATE ai_user_limits SET blocked_until = '2099-03-04 05:06:07.262579+00' WHERE user_id = 'ops-5';
SELECT error, reset_at = '2099-03-04 05:06:07.262579+00' AS exact_reset_at
FROM ai_check_limit('ops-5', 'enterprise');
UPDATE ai_user_limits SET blocked_until = '2099-03-04 05:06:07+00' WHERE user_id = 'ops-5';
SELECT error FROM ai_check_limit('ops-5', 'enterprise');
-- a block that has passed blocks nothing
UPDATE ai_user_limits SET blocked_until = now() - interval '1 second' WHERE user_id = 'ops-5';
SELECT allowed, limited_by FROM ai_check_limit('ops-5', 'enterprise');
-- a blocked request takes nothing either
UPDATE ai_user_limits SET blocked_until = 'infinity' WHERE user_id = 'ops-5';
SELECT allowed FROM checks('ops-5', 'enterprise', 5);
DELETE FROM ai_user_limits WHERE user_id = 'ops-5';
SELECT remaining FROM ai_peek_limit('ops-5', 'enterprise');

-- tokens per minute: recorded tokens count, the estimate is checked
INSERT INTO ai_plans (plan, burst_limit, daily_limit, tokens_per_minute)
VALUES ('tpm', NULL, NULL, 10000);
SELECT allowed, limited_by FROM ai_check_limit('ops-6', 'tpm', 0, 8000);
SELECT ai_record_usage('ops-6', 'gpt-4o', 6000, 2000);
SELECT allowed, limited_by FROM ai_check_limit('ops-6', 'tpm', 0, 2000);
SELECT allowed, limited_by, error, retry_after BETWEEN 1 AND 80 AS retry_within_the_minute
FROM ai_check_limit('ops-6', 'tpm', 0, 2001);
SELECT ai_record_usage('ops-6', 'gpt-4o', 1000, 1000, 0);
-- the minute is used up: even a request without an estimate waits
SELECT allowed, limited_by FROM ai_check_limit('ops-6', 'tpm');
SELECT tokens_last_minute FROM ai_ratelimit_status WHERE user_id = 'ops-6';
-- an estimate larger than the limit can never pass
SELECT allowed, retry_after FROM ai_check_limit('ops-6', 'tpm', 0, 20000);
-- tokens recorded by a transaction that rolls back are given back
BEGIN;
SELECT ai_record_usage('ops-7', 'gpt-4o', 9000, 0);
SELECT allowed, limited_by FROM ai_check_limit('ops-7', 'tpm', 0, 2000);
ROLLBACK;
SELECT allowed, limited_by FROM ai_check_limit('ops-7', 'tpm', 0, 2000);
-- a per-user override of tokens per minute
INSERT INTO ai_user_limits (user_id, tokens_per_minute) VALUES ('ops-7', 100);
SELECT allowed, limited_by, error FROM ai_check_limit('ops-7', 'tpm', 0, 101);
DELETE FROM ai_user_limits WHERE user_id = 'ops-spend';

-- retention: ai_purge_usage moves old log rows into per-day totals, and
-- the rollup and the monthly spend stay exact
SELECT ai_record_usage('ops-8', 'gpt-4o', 1000, 1000) FROM generate_series(1, 3);
UPDATE ai_usage SET created_at = created_at - interval '40 days' WHERE user_id = 'ops-8';
SELECT ai_monthly_spend('ops-8') AS spend_before,
       (SELECT (calls, cost_cents) FROM ai_usage_daily WHERE user_id = 'ops-8') AS rollup_before;
SELECT ai_purge_usage('30 days');
SELECT count(*) AS log_rows FROM ai_usage WHERE user_id = 'ops-8';
SELECT user_id, model, calls, input_tokens, output_tokens, cost_cents FROM ai_usage_archive WHERE user_id = 'ops-8';
SELECT ai_monthly_spend('ops-8') AS spend_after,
       (SELECT (calls, cost_cents) FROM ai_usage_daily WHERE user_id = 'ops-8') AS rollup_after;
-- purging again merges into the same totals
SELECT ai_record_usage('ops-8', 'gpt-4o', 1000, 1000);
UPDATE ai_usage SET created_at = created_at - interval '40 days' WHERE user_id = 'ops-8';
SELECT ai_purge_usage('30 days');
SELECT calls, cost_cents FROM ai_usage_archive WHERE user_id = 'ops-8';
SELECT ai_monthly_spend('ops-8');
-- the budget check still counts purged spend
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents) VALUES ('five', NULL, NULL, 5);
SELECT allowed, limited_by FROM ai_check_limit('ops-8', 'five', 0.01);
SELECT ai_purge_usage(NULL);
SELECT ai_purge_usage('-1 day');

-- bad values in ai_user_limits and the new plan columns
\set VERBOSITY sqlstate
INSERT INTO ai_user_limits (user_id, burst_limit) VALUES ('bad-ul', -1);
INSERT INTO ai_user_limits (user_id, tokens_per_minute) VALUES ('bad-ul', -1);
INSERT INTO ai_user_limits (user_id, burst_window) VALUES ('bad-ul', '0');
INSERT INTO ai_user_limits (user_id) VALUES ('');
INSERT INTO ai_plans (plan, tokens_per_minute) VALUES ('bad-tpm', -5);
INSERT INTO ai_plans (plan, alert_percents) VALUES ('bad-alert', '{0}');
INSERT INTO ai_plans (plan, alert_percents) VALUES ('bad-alert', '{80,NULL}');
INSERT INTO ai_plans (plan, alert_percents) VALUES ('bad-alert', '{1,2,3,4,5,6,7,8,9}');
SELECT * FROM ai_check_limit('bad-tok', 'tpm', 0, -1);
SELECT * FROM ai_check_limit('bad-tok', 'tpm', 0, 9000000000000);
\set VERBOSITY default

-- a monitoring role, granted what the README says, reads both views and
-- nothing else
CREATE ROLE regress_ai_monitor;
GRANT SELECT ON ai_ratelimit_status, ai_ratelimit_stats TO regress_ai_monitor;
GRANT EXECUTE ON FUNCTION ai_ratelimit_status(), ai_ratelimit_stats() TO regress_ai_monitor;
SET ROLE regress_ai_monitor;
SELECT count(*) > 0 AS sees_users FROM ai_ratelimit_status;
SELECT count(*) > 0 AS sees_stats FROM ai_ratelimit_stats;
\set VERBOSITY sqlstate
SELECT ai_ratelimit_reset_stats();
SELECT * FROM ai_check_limit('mon-1', 'pro');
SELECT count(*) FROM ai_usage;
\set VERBOSITY default
RESET ROLE;
DROP OWNED BY regress_ai_monitor;
DROP ROLE regress_ai_monitor;

-- every function, view and table of the extension says what it is (\df+, \d+)
SELECT pg_describe_object(d.classid, d.objid, 0) AS without_comment
FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
WHERE d.refclassid = 'pg_extension'::regclass AND e.extname = 'ai_ratelimit' AND d.deptype = 'e'
  AND d.classid IN ('pg_proc'::regclass, 'pg_class'::regclass)
  AND obj_description(d.objid, d.classid::regclass::text) IS NULL
ORDER BY 1;
