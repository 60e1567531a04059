/* ai_ratelimit 1.1 -> 1.2: monitoring views, budget alerts, per-user limits and blocks, tokens per minute, retention */

\echo Use "ALTER EXTENSION ai_ratelimit UPDATE TO '1.2'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Plans: tokens per minute and budget alert thresholds
-- ---------------------------------------------------------------------------

ALTER TABLE @extschema@.ai_plans
    ADD COLUMN tokens_per_minute bigint
        CHECK (tokens_per_minute OPERATOR(pg_catalog.>=) 0),
    ADD COLUMN alert_percents integer[]
        CHECK (pg_catalog.cardinality(alert_percents) OPERATOR(pg_catalog.<=) 8
               AND pg_catalog.array_position(alert_percents, NULL) IS NULL
               AND 1 OPERATOR(pg_catalog.<=) ALL (alert_percents)
               AND 1000 OPERATOR(pg_catalog.>=) ALL (alert_percents));
COMMENT ON COLUMN @extschema@.ai_plans.tokens_per_minute IS
    'tokens (input + output + cached input) a user may use in any minute; NULL: no limit';
COMMENT ON COLUMN @extschema@.ai_plans.alert_percents IS
    'percents of monthly_budget_cents at which pg_notify(''ai_ratelimit'', ...) fires, once per user and month';

-- a seed is unchanged only if the new columns are still empty too
CREATE OR REPLACE FUNCTION @extschema@.ai_plan_is_seed(p @extschema@.ai_plans)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (p.plan, p.burst_limit, p.burst_window, p.daily_limit, p.monthly_budget_cents)
           IS NOT DISTINCT FROM
           (CASE p.plan
                WHEN 'free'       THEN ROW('free'::text, 5, '1 minute'::interval, 20, NULL::numeric)
                WHEN 'pro'        THEN ROW('pro'::text, 30, '1 minute'::interval, 500, NULL::numeric)
                WHEN 'enterprise' THEN ROW('enterprise'::text, 100, '1 minute'::interval, 10000, NULL::numeric)
            END)
       AND p.tokens_per_minute IS NULL AND p.alert_percents IS NULL
$$;

CREATE OR REPLACE FUNCTION @extschema@.ai_replace_seed()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- a seed name added again is no longer removed; a seed never edited is
    -- replaced by the new row
    IF TG_TABLE_NAME OPERATOR(pg_catalog.=) 'ai_plans' THEN
        DELETE FROM @extschema@.ai_removed_seeds r
         WHERE r.kind OPERATOR(pg_catalog.=) 'plan' AND r.key OPERATOR(pg_catalog.=) NEW.plan;
        UPDATE @extschema@.ai_plans t
           SET burst_limit = NEW.burst_limit, burst_window = NEW.burst_window,
               daily_limit = NEW.daily_limit, monthly_budget_cents = NEW.monthly_budget_cents,
               tokens_per_minute = NEW.tokens_per_minute, alert_percents = NEW.alert_percents
         WHERE t.plan OPERATOR(pg_catalog.=) NEW.plan AND @extschema@.ai_plan_is_seed(t);
    ELSE
        DELETE FROM @extschema@.ai_removed_seeds r
         WHERE r.kind OPERATOR(pg_catalog.=) 'price' AND r.key OPERATOR(pg_catalog.=) NEW.model;
        UPDATE @extschema@.ai_model_prices t
           SET input_usd_per_mtok = NEW.input_usd_per_mtok,
               output_usd_per_mtok = NEW.output_usd_per_mtok,
               cached_input_usd_per_mtok = NEW.cached_input_usd_per_mtok
         WHERE t.model OPERATOR(pg_catalog.=) NEW.model AND @extschema@.ai_price_is_seed(t);
    END IF;
    IF FOUND THEN
        RETURN NULL;            -- the seed now holds the new values
    END IF;
    RETURN NEW;
END
$$;

-- ---------------------------------------------------------------------------
-- Per-user overrides and blocks
-- ---------------------------------------------------------------------------

CREATE TABLE @extschema@.ai_user_limits (
    user_id              text PRIMARY KEY
                         CHECK (user_id OPERATOR(pg_catalog.<>) ''
                                AND pg_catalog.octet_length(user_id) OPERATOR(pg_catalog.<=) 256),
    burst_limit          integer CHECK (burst_limit OPERATOR(pg_catalog.>=) 0),
    burst_window         interval
                         CHECK (burst_window OPERATOR(pg_catalog.>=) '1 millisecond'::pg_catalog.interval
                                AND burst_window OPERATOR(pg_catalog.<=) '1 day'::pg_catalog.interval),
    daily_limit          integer CHECK (daily_limit OPERATOR(pg_catalog.>=) 0),
    monthly_budget_cents numeric
                         CHECK (monthly_budget_cents OPERATOR(pg_catalog.>=) 0
                                AND monthly_budget_cents OPERATOR(pg_catalog.<) 'Infinity'::pg_catalog.numeric),
    tokens_per_minute    bigint CHECK (tokens_per_minute OPERATOR(pg_catalog.>=) 0),
    blocked_until        timestamptz,
    note                 text
);
COMMENT ON TABLE @extschema@.ai_user_limits IS
    'ai_ratelimit: per-user overrides of plan limits (non-NULL columns win) and blocks until blocked_until';
CREATE TRIGGER ai_user_limits_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.ai_user_limits
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.ai_ratelimit_config_changed('plans');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_user_limits', '');

-- ---------------------------------------------------------------------------
-- Checks with a token estimate (the three-argument forms stay as they are)
-- ---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ai_check_limit(
    user_id text, plan text, estimated_cost_cents numeric, estimated_tokens bigint)
RETURNS @extschema@.ai_limit_result
AS 'MODULE_PATHNAME', 'ai_check_limit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_check_limit(text, text, numeric, bigint) IS
    'check and count one AI request, with the tokens it is expected to use';

CREATE FUNCTION @extschema@.ai_enforce_limit(
    user_id text, plan text, estimated_cost_cents numeric, estimated_tokens bigint)
RETURNS @extschema@.ai_limit_result
AS 'MODULE_PATHNAME', 'ai_enforce_limit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_enforce_limit(text, text, numeric, bigint) IS
    'like ai_check_limit with a token estimate, but a refused request raises SQLSTATE 53400';

-- ---------------------------------------------------------------------------
-- Monitoring
-- ---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ai_ratelimit_status(
    OUT user_id text,
    OUT user_id_truncated boolean,
    OUT plan text,
    OUT burst_used bigint,
    OUT burst_resets_at timestamptz,
    OUT daily_used bigint,
    OUT tokens_last_minute bigint,
    OUT reserved_cents numeric,
    OUT open_reservations integer,
    OUT in_flight_cents numeric,
    OUT month_spend_cents numeric)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'ai_ratelimit_status'
LANGUAGE C VOLATILE;

CREATE VIEW @extschema@.ai_ratelimit_status AS
    SELECT * FROM @extschema@.ai_ratelimit_status();
COMMENT ON VIEW @extschema@.ai_ratelimit_status IS
    'ai_ratelimit: one row per user of this database with live counters in shared memory';

CREATE FUNCTION @extschema@.ai_ratelimit_stats(
    OUT plan text,
    OUT limited_by text,
    OUT requests bigint,
    OUT since timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'ai_ratelimit_stats'
LANGUAGE C VOLATILE;

CREATE VIEW @extschema@.ai_ratelimit_stats AS
    SELECT * FROM @extschema@.ai_ratelimit_stats();
COMMENT ON VIEW @extschema@.ai_ratelimit_stats IS
    'ai_ratelimit: checks by plan and outcome (limited_by NULL: allowed) since the last reset; plan NULL rows: evicted counters and full-hash events';

CREATE FUNCTION @extschema@.ai_ratelimit_reset_stats()
RETURNS void
AS 'MODULE_PATHNAME', 'ai_ratelimit_reset_stats'
LANGUAGE C VOLATILE;

-- ---------------------------------------------------------------------------
-- Retention
-- ---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ai_purge_usage(older_than interval)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    purged bigint;
BEGIN
    IF older_than IS NULL OR older_than OPERATOR(pg_catalog.<) '0'::pg_catalog.interval THEN
        RAISE EXCEPTION 'older_than must be a non-negative interval'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- log rows leave for the archive as per-day totals, in one statement:
    -- ai_usage_daily and the monthly spend read both, so they stay exact
    WITH moved AS (
        DELETE FROM @extschema@.ai_usage
         WHERE created_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) older_than)
        RETURNING user_id, day, model, input_tokens, output_tokens, cached_input_tokens, cost_cents
    ), totals AS (
        SELECT user_id, day, model, pg_catalog.count(*) AS calls,
               pg_catalog.sum(input_tokens)::bigint AS input_tokens,
               pg_catalog.sum(output_tokens)::bigint AS output_tokens,
               pg_catalog.sum(cached_input_tokens)::bigint AS cached_input_tokens,
               pg_catalog.sum(cost_cents) AS cost_cents
          FROM moved GROUP BY user_id, day, model
    ), merged AS (
        INSERT INTO @extschema@.ai_usage_archive AS a
        SELECT * FROM totals
        ON CONFLICT (user_id, day, model) DO UPDATE
           SET calls = a.calls OPERATOR(pg_catalog.+) excluded.calls,
               input_tokens = a.input_tokens OPERATOR(pg_catalog.+) excluded.input_tokens,
               output_tokens = a.output_tokens OPERATOR(pg_catalog.+) excluded.output_tokens,
               cached_input_tokens = a.cached_input_tokens OPERATOR(pg_catalog.+) excluded.cached_input_tokens,
               cost_cents = a.cost_cents OPERATOR(pg_catalog.+) excluded.cost_cents
        RETURNING 1
    )
    SELECT COALESCE(pg_catalog.sum(calls), 0)::bigint INTO purged FROM totals;
    RETURN purged;
END
$$;
COMMENT ON FUNCTION @extschema@.ai_purge_usage(interval) IS
    'move usage log rows older than the interval into per-day totals; returns the rows moved';

-- ---------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC
-- ---------------------------------------------------------------------------

REVOKE ALL ON FUNCTION @extschema@.ai_check_limit(text, text, numeric, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_enforce_limit(text, text, numeric, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_ratelimit_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_ratelimit_stats() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_ratelimit_reset_stats() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_purge_usage(interval) FROM PUBLIC;
REVOKE ALL ON @extschema@.ai_user_limits, @extschema@.ai_ratelimit_status,
              @extschema@.ai_ratelimit_stats
    FROM PUBLIC;
