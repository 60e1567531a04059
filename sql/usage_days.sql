--
-- usage_days: per-day totals (ai_compact_usage, 1.6; open days up to a time, 1.7).  A
-- budget load reads a totalled day from ai_usage_days and every other day
-- from its rows; a row written, changed or deleted on a totalled day by
-- anything but ai_record_usage marks the day, which is read from its rows
-- until it is totalled again.  The sums are the same on every path.
--
SELECT date_trunc('month', now() AT TIME ZONE current_setting('ai_ratelimit.timezone'))::date
       - interval '1 month' AS last_month \gset
CREATE FUNCTION put(u text, d date, cents numeric, n int DEFAULT 1) RETURNS void LANGUAGE sql AS $$
    INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
                          cached_input_tokens, cost_cents)
    SELECT d::timestamptz + interval '12 hours', d, u, 'gpt-4o', 'gpt-4o', 100, 10, 0, cents
    FROM generate_series(1, n)
$$;
-- the log: last month's days 3 and 10 for two users
SELECT put('d-1', (:'last_month'::date + 2), 1.5, 4), put('d-1', (:'last_month'::date + 9), 2.25, 2),
       put('d-2', (:'last_month'::date + 9), 10, 1);
-- every row written by INSERT marked its user and day, once per transaction
SELECT user_id, day - :'last_month'::date AS day_of_month, count(*)
FROM ai_usage_days_stale WHERE user_id LIKE 'd-%' GROUP BY 1, 2 ORDER BY 1, 2;
SELECT ai_monthly_spend('d-1', :'last_month'), ai_monthly_spend('d-2', :'last_month');
-- totalled: the closed days get their totals, the marks of those days go
SELECT ai_compact_usage() >= 3 AS totalled;
SELECT user_id, day - :'last_month'::date AS day_of_month, model, calls, input_tokens, output_tokens, cost_cents
FROM ai_usage_days WHERE user_id LIKE 'd-%' ORDER BY 1, 2;
SELECT count(*) AS marks_left FROM ai_usage_days_stale WHERE user_id LIKE 'd-%';
-- the same spend, now from the totals
SELECT ai_monthly_spend('d-1', :'last_month'), ai_monthly_spend('d-2', :'last_month');
-- nothing left to total: a second run writes nothing
SELECT count(*) FROM ai_usage_days WHERE user_id LIKE 'd-%';
SELECT ai_compact_usage() = 0 AS nothing_new;

-- a late row on a totalled day (a backfill, a restore, replication apply) counts at once
SELECT put('d-1', (:'last_month'::date + 2), 0.75);
SELECT ai_monthly_spend('d-1', :'last_month');
-- a deleted row stops counting at once, and so does a changed one
DELETE FROM ai_usage WHERE user_id = 'd-2';
SELECT ai_monthly_spend('d-2', :'last_month');
UPDATE ai_usage SET cost_cents = 3 WHERE user_id = 'd-1' AND day = :'last_month'::date + 9;
SELECT ai_monthly_spend('d-1', :'last_month');
SELECT user_id, day - :'last_month'::date AS day_of_month FROM ai_usage_days_stale
WHERE user_id LIKE 'd-%' GROUP BY 1, 2 ORDER BY 1, 2;
-- totalled again: the same sums
SELECT ai_compact_usage() > 0 AS totalled_again;
SELECT count(*) AS marks_left FROM ai_usage_days_stale WHERE user_id LIKE 'd-%';
SELECT user_id, day - :'last_month'::date AS day_of_month, calls, cost_cents
FROM ai_usage_days WHERE user_id LIKE 'd-%' ORDER BY 1, 2;
SELECT ai_monthly_spend('d-1', :'last_month'), ai_monthly_spend('d-2', :'last_month');

-- a mark made in a subtransaction that rolls back is made again
BEGIN;
SAVEPOINT s;
SELECT put('d-3', (:'last_month'::date + 4), 1);
ROLLBACK TO SAVEPOINT s;
SELECT put('d-3', (:'last_month'::date + 4), 2);
COMMIT;
SELECT count(*) AS marks FROM ai_usage_days_stale WHERE user_id = 'd-3';

-- ai_purge_usage moves rows to the archive: their days are read from rows and archive
SELECT ai_compact_usage() > 0 AS totalled;
SELECT ai_monthly_spend('d-1', :'last_month') AS before_purge;
SELECT ai_purge_usage('1 second') > 0 AS purged;
SELECT ai_monthly_spend('d-1', :'last_month') AS after_purge;
SELECT ai_compact_usage() >= 0 AS totalled;
SELECT ai_monthly_spend('d-1', :'last_month') AS after_totals;

-- 1.7: days more than two days before the oldest open record (here: now)
-- are closed and totalled whole; today and the two days before stay open,
-- totalled up to an hour (a session labels a record in the old zone or the
-- new one after a change of ai_ratelimit.timezone, at most 26 hours apart)
SELECT (now() AT TIME ZONE 'UTC')::date - 1 AS yesterday \gset
SELECT put('d-4', :'yesterday'::date - 2, 1), put('d-4', :'yesterday'::date - 1, 2);
SELECT ai_compact_usage() > 0 AS totalled;
SELECT :'yesterday'::date + 1 - day AS days_ago, upto IS NULL AS whole
FROM ai_usage_days WHERE user_id = 'd-4' ORDER BY 1;
-- a change of the zone is seen by every process (ai_ratelimit_timezone_changed_at)
SELECT ai_ratelimit_timezone_changed_at() IS NULL AS never_changed;
ALTER SYSTEM SET ai_ratelimit.timezone = 'Pacific/Kiritimati';
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
SELECT current_setting('ai_ratelimit.timezone'),
       ai_ratelimit_timezone_changed_at() > now() - interval '1 minute' AS just_changed;
SELECT put('d-5', :'yesterday'::date, 1);
SELECT ai_compact_usage() >= 0 AS ran;
-- (yesterday is open: totalled up to an hour before the oldest open record)
SELECT count(*) AS d5_totals, bool_and(upto IS NOT NULL) AS up_to_a_time
FROM ai_usage_days WHERE user_id = 'd-5';

-- Open days are totalled up to an hour boundary at least five minutes
-- before the oldest open record (here: now), and a load adds their later
-- rows from the log.
CREATE FUNCTION put_at(u text, at timestamptz, cents numeric) RETURNS void LANGUAGE sql AS $$
    INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
                          cached_input_tokens, cost_cents)
    VALUES (at, timezone(current_setting('ai_ratelimit.timezone'), at)::date, u, 'gpt-4o', 'gpt-4o',
            100, 10, 0, cents)
$$;
-- the spend a load finds, against the rows' own sum, in every month they touch
CREATE FUNCTION spend_is_exact(u text) RETURNS boolean LANGUAGE sql AS $$
    SELECT bool_and(ai_monthly_spend(u, m) = t)
    FROM (SELECT date_trunc('month', day)::date AS m, sum(cost_cents) AS t
          FROM ai_usage WHERE user_id = u GROUP BY 1) s
$$;
SELECT put_at('d-6', now() - interval '3 hours', 1.25), put_at('d-6', now() - interval '2 hours', 2);
SELECT ai_compact_usage() > 0 AS totalled;
SELECT sum(calls) AS calls, sum(cost_cents) AS cents,
       bool_and(upto <= now() - interval '5 minutes' AND upto > now() - interval '66 minutes'
                AND date_trunc('hour', upto) = upto) AS up_to_an_hour
FROM ai_usage_days WHERE user_id = 'd-6';
SELECT spend_is_exact('d-6');
-- a record after the cut is read from the log, beside the totals
SELECT ai_record_usage('d-6', 'gpt-4o', 1000, 100) > 0 AS recorded;
SELECT spend_is_exact('d-6');
-- a late row before the cut marks its day, read from the log again
SELECT put_at('d-6', now() - interval '4 hours', 0.5);
SELECT count(*) > 0 AS marked FROM ai_usage_days_stale WHERE user_id = 'd-6';
SELECT spend_is_exact('d-6');
-- the next run totals the open days anew, with every row before the cut
SELECT ai_compact_usage() > 0 AS totalled;
SELECT sum(calls) AS calls, sum(cost_cents) AS cents FROM ai_usage_days WHERE user_id = 'd-6';
SELECT count(*) AS marks_left FROM ai_usage_days_stale WHERE user_id = 'd-6';
SELECT spend_is_exact('d-6');
-- a per-model rule's window reads the same totals
INSERT INTO ai_rules (scope, scope_id, model, metric, "window", max_value)
VALUES ('user', 'd-6', 'gpt-4o', 'cents', 'day', 1000000);
SELECT bool_and(used = (SELECT sum(cost_cents) FROM ai_usage
                        WHERE user_id = 'd-6' AND model = 'gpt-4o'
                          AND day = timezone(current_setting('ai_ratelimit.timezone'), now())::date))
       AS rule_used_exact
FROM ai_explain_limits('d-6', 'gpt-4o') WHERE rule_id IS NOT NULL;
DELETE FROM ai_rules WHERE scope_id = 'd-6';
-- a snapshot older than the call could miss rows that ended before it
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT ai_compact_usage();
ROLLBACK;
ALTER SYSTEM RESET ai_ratelimit.timezone;
SELECT pg_reload_conf();
SELECT pg_sleep(0.2);
SELECT current_setting('ai_ratelimit.timezone');

-- not for everyone
CREATE ROLE regress_ai_days_nobody;
SET ROLE regress_ai_days_nobody;
SELECT ai_compact_usage();
RESET ROLE;
DROP ROLE regress_ai_days_nobody;
DROP FUNCTION put(text, date, numeric, int);
DROP FUNCTION put_at(text, timestamptz, numeric);
DROP FUNCTION spend_is_exact(text);

