-- Benchmark setup: plans whose limits never refuse, so every call is
-- allowed and counted, the floor function, and the plain-SQL limiter that a
-- user would write instead of ai_ratelimit.
CREATE EXTENSION IF NOT EXISTS ai_ratelimit;

INSERT INTO ai_plans (plan, burst_limit, burst_window, daily_limit, monthly_budget_cents)
VALUES ('bench',        2147483647, '1 minute', 2147483647, NULL),
       ('bench-budget', 2147483647, '1 minute', 2147483647, 1e15),
       ('bench-rule',   2147483647, '1 minute', 2147483647, NULL);
-- bench-rule is bench with one rule: a monthly budget for one model
INSERT INTO ai_rules (scope, scope_id, model, metric, "window", max_value)
VALUES ('plan', 'bench-rule', 'claude-sonnet-*', 'cents', 'month', 1e11);

-- the floor: same signature and result type as ai_check_limit, does nothing
CREATE FUNCTION bench_floor(user_id text, plan text DEFAULT NULL,
                            estimated_cost_cents numeric DEFAULT 0)
RETURNS ai_limit_result
AS :'floor_so', 'ai_floor' LANGUAGE C VOLATILE;
-- the same, answering the columns an allowed check fills (constants)
CREATE FUNCTION bench_floor_row(user_id text, plan text DEFAULT NULL,
                                estimated_cost_cents numeric DEFAULT 0)
RETURNS ai_limit_result
AS :'floor_so', 'ai_floor_row' LANGUAGE C VOLATILE;

-- The 1.3 result shape (7 columns), answered by the same C function: the
-- check through 1.4's result (11 columns) is compared with it.
CREATE TYPE bench_result_13 AS (allowed boolean, error text, retry_after integer,
                                remaining integer, limited_by text, reset_at timestamptz,
                                reservation_id bigint);
CREATE FUNCTION bench_check_13(user_id text, plan text DEFAULT NULL,
                               estimated_cost_cents numeric DEFAULT 0)
RETURNS bench_result_13
AS 'ai_ratelimit', 'ai_check_limit' LANGUAGE C VOLATILE;
-- The same C function bound the same way to the 1.4 type: the two differ
-- only in the result shape.
CREATE FUNCTION bench_check_14(user_id text, plan text DEFAULT NULL,
                               estimated_cost_cents numeric DEFAULT 0)
RETURNS ai_limit_result
AS 'ai_ratelimit', 'ai_check_limit' LANGUAGE C VOLATILE;

-- The plain-SQL limiter: a burst row per user and minute, a daily row per
-- user and day, each upserted under its primary key, in the caller's
-- transaction.  The same two layers as ai_check_limit (fixed windows, which
-- is already more lenient than a sliding one).
CREATE TABLE plain_burst (
    user_id      text NOT NULL,
    window_start timestamptz NOT NULL,
    count        integer NOT NULL,
    PRIMARY KEY (user_id, window_start)
);
CREATE TABLE plain_daily (
    user_id text NOT NULL,
    day     date NOT NULL,
    count   integer NOT NULL,
    PRIMARY KEY (user_id, day)
);
CREATE FUNCTION plain_check(p_user text, p_burst integer, p_daily integer,
                            OUT allowed boolean, OUT remaining integer)
LANGUAGE plpgsql AS $$
DECLARE
    b integer;
    d integer;
BEGIN
    INSERT INTO plain_burst AS t VALUES (p_user, date_trunc('minute', clock_timestamp()), 1)
    ON CONFLICT (user_id, window_start) DO UPDATE SET count = t.count + 1
    RETURNING t.count INTO b;
    INSERT INTO plain_daily AS t VALUES (p_user, current_date, 1)
    ON CONFLICT (user_id, day) DO UPDATE SET count = t.count + 1
    RETURNING t.count INTO d;
    allowed := b <= p_burst AND d <= p_daily;
    remaining := p_daily - d;
END $$;

-- an ordinary table with the same columns, keys and indexes as ai_usage
CREATE TABLE plain_usage (LIKE ai_usage INCLUDING ALL);
