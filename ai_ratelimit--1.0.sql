/* ai_ratelimit 1.0: per-user AI (LLM API) rate limits and budgets */

\echo Use "CREATE EXTENSION ai_ratelimit" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Configuration
-- ---------------------------------------------------------------------------

-- Plans: NULL in a limit column means "no limit" for that layer.
CREATE TABLE @extschema@.ai_plans (
    plan                 text PRIMARY KEY
                         CHECK (plan OPERATOR(pg_catalog.<>) ''
                                AND pg_catalog.octet_length(plan) OPERATOR(pg_catalog.<=) 127),
    burst_limit          integer CHECK (burst_limit OPERATOR(pg_catalog.>=) 0),
    burst_window         interval NOT NULL DEFAULT '1 minute'
                         CHECK (burst_window OPERATOR(pg_catalog.>=) '1 millisecond'::pg_catalog.interval
                                AND burst_window OPERATOR(pg_catalog.<=) '1 day'::pg_catalog.interval),
    daily_limit          integer CHECK (daily_limit OPERATOR(pg_catalog.>=) 0),
    monthly_budget_cents numeric
                         CHECK (monthly_budget_cents OPERATOR(pg_catalog.>=) 0
                                AND monthly_budget_cents OPERATOR(pg_catalog.<) 'Infinity'::pg_catalog.numeric)
);
COMMENT ON TABLE @extschema@.ai_plans IS
    'ai_ratelimit plans: burst, daily and monthly budget limits; NULL means no limit';

INSERT INTO @extschema@.ai_plans (plan, burst_limit, burst_window, daily_limit, monthly_budget_cents) VALUES
    ('free',        5,  '1 minute',    20, NULL),
    ('pro',        30,  '1 minute',   500, NULL),
    ('enterprise', 100, '1 minute', 10000, NULL);

-- A user's plan, used when ai_check_limit is called without one.
CREATE TABLE @extschema@.ai_user_plans (
    user_id text PRIMARY KEY
            CHECK (user_id OPERATOR(pg_catalog.<>) ''
                   AND pg_catalog.octet_length(user_id) OPERATOR(pg_catalog.<=) 256),
    plan    text NOT NULL REFERENCES @extschema@.ai_plans (plan) ON UPDATE CASCADE
);
COMMENT ON TABLE @extschema@.ai_user_plans IS
    'ai_ratelimit: the plan of each user; users without a row are on ''free''';

-- Model prices in US dollars per million tokens, as vendors publish them.
CREATE TABLE @extschema@.ai_model_prices (
    model                     text PRIMARY KEY
                              CHECK (model OPERATOR(pg_catalog.<>) ''
                                     AND pg_catalog.octet_length(model) OPERATOR(pg_catalog.<=) 256),
    input_usd_per_mtok        numeric NOT NULL,
    output_usd_per_mtok       numeric NOT NULL,
    cached_input_usd_per_mtok numeric,
    CONSTRAINT ai_model_prices_range CHECK (
        input_usd_per_mtok OPERATOR(pg_catalog.>=) 0
        AND input_usd_per_mtok OPERATOR(pg_catalog.<=) 10000
        AND output_usd_per_mtok OPERATOR(pg_catalog.>=) 0
        AND output_usd_per_mtok OPERATOR(pg_catalog.<=) 10000
        AND (cached_input_usd_per_mtok IS NULL
             OR (cached_input_usd_per_mtok OPERATOR(pg_catalog.>=) 0
                 AND cached_input_usd_per_mtok OPERATOR(pg_catalog.<=) 10000))),
    CONSTRAINT ai_model_prices_scale CHECK (
        pg_catalog.scale(input_usd_per_mtok) OPERATOR(pg_catalog.<=) 5
        AND pg_catalog.scale(output_usd_per_mtok) OPERATOR(pg_catalog.<=) 5
        AND COALESCE(pg_catalog.scale(cached_input_usd_per_mtok), 0) OPERATOR(pg_catalog.<=) 5)
);
COMMENT ON TABLE @extschema@.ai_model_prices IS
    'ai_ratelimit: USD per million tokens; the row ''*'' prices models not listed';

INSERT INTO @extschema@.ai_model_prices VALUES
    ('claude-sonnet-4-6', 3,    15, 0.30),
    ('gpt-4o',            2.50, 10, 1.25),
    -- models not listed: the highest seeded price of each kind
    ('*',                 3,    15, 1.25);

-- ---------------------------------------------------------------------------
-- Usage
-- ---------------------------------------------------------------------------

-- The usage log: one row per recorded call, insert-only.
CREATE TABLE @extschema@.ai_usage (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at          timestamptz NOT NULL,
    day                 date NOT NULL,
    user_id             text NOT NULL,
    model               text NOT NULL,
    priced_as           text NOT NULL,
    input_tokens        bigint NOT NULL CHECK (input_tokens OPERATOR(pg_catalog.>=) 0),
    output_tokens       bigint NOT NULL CHECK (output_tokens OPERATOR(pg_catalog.>=) 0),
    cached_input_tokens bigint NOT NULL CHECK (cached_input_tokens OPERATOR(pg_catalog.>=) 0),
    cost_cents          numeric NOT NULL CHECK (cost_cents OPERATOR(pg_catalog.>=) 0),
    reservation_id      bigint
);
CREATE INDEX ai_usage_user_day_idx ON @extschema@.ai_usage (user_id, day);
COMMENT ON TABLE @extschema@.ai_usage IS
    'ai_ratelimit: one row per AI call recorded by ai_record_usage';

-- Rolled-up totals of log rows removed by ai_purge_usage.
CREATE TABLE @extschema@.ai_usage_archive (
    user_id             text NOT NULL,
    day                 date NOT NULL,
    model               text NOT NULL,
    calls               bigint NOT NULL,
    input_tokens        bigint NOT NULL,
    output_tokens       bigint NOT NULL,
    cached_input_tokens bigint NOT NULL,
    cost_cents          numeric NOT NULL,
    PRIMARY KEY (user_id, day, model)
);
COMMENT ON TABLE @extschema@.ai_usage_archive IS
    'ai_ratelimit: per-day totals of purged ai_usage rows';

-- The per-day rollup: log and archive added up, per user, day and model.
CREATE VIEW @extschema@.ai_usage_daily AS
SELECT user_id, day, model,
       pg_catalog.sum(calls)::bigint               AS calls,
       pg_catalog.sum(input_tokens)::bigint        AS input_tokens,
       pg_catalog.sum(output_tokens)::bigint       AS output_tokens,
       pg_catalog.sum(cached_input_tokens)::bigint AS cached_input_tokens,
       pg_catalog.sum(cost_cents)                  AS cost_cents
FROM (
    SELECT user_id, day, model, 1::bigint AS calls, input_tokens, output_tokens,
           cached_input_tokens, cost_cents
    FROM @extschema@.ai_usage
    UNION ALL
    SELECT user_id, day, model, calls, input_tokens, output_tokens,
           cached_input_tokens, cost_cents
    FROM @extschema@.ai_usage_archive
) u
GROUP BY user_id, day, model;
COMMENT ON VIEW @extschema@.ai_usage_daily IS
    'ai_ratelimit: calls, tokens and cents per user, day and model';

-- ---------------------------------------------------------------------------
-- Keeping backend caches fresh
-- ---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ai_ratelimit_config_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'ai_ratelimit_config_changed'
LANGUAGE C;

CREATE TRIGGER ai_plans_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.ai_plans
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.ai_ratelimit_config_changed('plans');
CREATE TRIGGER ai_user_plans_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.ai_user_plans
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.ai_ratelimit_config_changed('plans');
CREATE TRIGGER ai_model_prices_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.ai_model_prices
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.ai_ratelimit_config_changed('prices');
CREATE TRIGGER ai_usage_changed
    AFTER UPDATE OR DELETE OR TRUNCATE ON @extschema@.ai_usage
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.ai_ratelimit_config_changed('usage');
CREATE TRIGGER ai_usage_archive_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.ai_usage_archive
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.ai_ratelimit_config_changed('usage');

-- The fallback price must stay: unlisted models are priced by it.
CREATE FUNCTION @extschema@.ai_model_prices_keep_fallback()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF OLD.model OPERATOR(pg_catalog.=) '*' AND (TG_OP OPERATOR(pg_catalog.=) 'DELETE'
        OR NEW.model OPERATOR(pg_catalog.<>) '*') THEN
        RAISE EXCEPTION 'the fallback price row ''*'' cannot be removed'
            USING ERRCODE = 'restrict_violation',
                  HINT = 'Update its prices instead; models not listed are priced by it.';
    END IF;
    IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER ai_model_prices_keep_fallback
    BEFORE UPDATE OR DELETE ON @extschema@.ai_model_prices
    FOR EACH ROW EXECUTE FUNCTION @extschema@.ai_model_prices_keep_fallback();

-- ---------------------------------------------------------------------------
-- The API
-- ---------------------------------------------------------------------------

CREATE TYPE @extschema@.ai_limit_result AS (
    allowed        boolean,
    error          text,
    retry_after    integer,
    remaining      integer,
    limited_by     text,
    reset_at       timestamptz,
    reservation_id bigint
);

CREATE FUNCTION @extschema@.ai_check_limit(
    user_id text,
    plan text DEFAULT NULL,
    estimated_cost_cents numeric DEFAULT 0)
RETURNS @extschema@.ai_limit_result
AS 'MODULE_PATHNAME', 'ai_check_limit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_check_limit(text, text, numeric) IS
    'check and count one AI request: burst, daily and monthly budget';

CREATE FUNCTION @extschema@.ai_enforce_limit(
    user_id text,
    plan text DEFAULT NULL,
    estimated_cost_cents numeric DEFAULT 0)
RETURNS @extschema@.ai_limit_result
AS 'MODULE_PATHNAME', 'ai_enforce_limit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_enforce_limit(text, text, numeric) IS
    'like ai_check_limit, but a refused request raises SQLSTATE 53400';

CREATE FUNCTION @extschema@.ai_peek_limit(
    user_id text,
    plan text DEFAULT NULL)
RETURNS @extschema@.ai_limit_result
AS 'MODULE_PATHNAME', 'ai_peek_limit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_peek_limit(text, text) IS
    'what ai_check_limit would answer now, without counting anything';

CREATE FUNCTION @extschema@.ai_reset_limits(user_id text)
RETURNS void
AS 'MODULE_PATHNAME', 'ai_reset_limits'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_reset_limits(text) IS
    'forget one user''s burst and daily counts (operators only)';

CREATE FUNCTION @extschema@.ai_record_usage(
    user_id text,
    model text,
    input_tokens bigint,
    output_tokens bigint,
    cached_input_tokens bigint DEFAULT 0,
    reservation_id bigint DEFAULT NULL)
RETURNS numeric
AS 'MODULE_PATHNAME', 'ai_record_usage'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_record_usage(text, text, bigint, bigint, bigint, bigint) IS
    'record one AI call; returns its exact cost in cents';

CREATE FUNCTION @extschema@.ai_monthly_spend(
    user_id text,
    month date DEFAULT NULL)
RETURNS numeric
AS 'MODULE_PATHNAME', 'ai_monthly_spend'
LANGUAGE C STABLE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_monthly_spend(text, date) IS
    'cents spent by a user in the month containing the given date (default: this month)';

-- ---------------------------------------------------------------------------
-- pg_dump keeps configuration and usage
-- ---------------------------------------------------------------------------
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_plans', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_user_plans', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_model_prices', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_usage', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_usage_archive', '');
