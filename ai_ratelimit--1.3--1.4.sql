/* ai_ratelimit--1.3--1.4.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION ai_ratelimit UPDATE TO '1.4'" to load this file. \quit

-- The saver's health: besides the last good save and the failures, when
-- counters last went to the WAL (for standbys), whether the saver runs now
-- (its pid, NULL when it does not), when and how often it started, and when
-- the reservation id ceiling was last saved.
DROP FUNCTION @extschema@.ai_ratelimit_saves();
CREATE FUNCTION @extschema@.ai_ratelimit_saves(
    OUT last_save timestamptz,
    OUT save_failures bigint,
    OUT last_wal timestamptz,
    OUT saver_pid integer,
    OUT saver_started timestamptz,
    OUT saver_starts integer,
    OUT ids_saved_at timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'ai_ratelimit_saves'
LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.ai_ratelimit_saves() IS
    'when the counters were last saved to disk and sent to the WAL, how many saves failed, and whether the saver runs';
REVOKE ALL ON FUNCTION @extschema@.ai_ratelimit_saves() FROM PUBLIC;

-- A reset no longer hands back the estimates of requests in flight.
COMMENT ON FUNCTION @extschema@.ai_reset_limits(text) IS
    'forget one user''s burst, daily and token counts; estimates of requests in flight stay held until recorded, released or expired; recorded spend stays (operators only)';

-- Give back the estimate of a request whose AI call failed or was abandoned.
CREATE FUNCTION @extschema@.ai_release_reservation(reservation_id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'ai_release_reservation'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_release_reservation(bigint) IS
    'give back the estimate held by a reservation whose AI call failed or was abandoned; false with a NOTICE when it is no longer open';
REVOKE ALL ON FUNCTION @extschema@.ai_release_reservation(bigint) FROM PUBLIC;

-- Refusals a program can act on: the refusing layer's limit, what is used
-- and what requests in flight hold (in requests, tokens or cents, as the
-- layer counts), and whether a retry can succeed.
ALTER TYPE @extschema@.ai_limit_result
    ADD ATTRIBUTE limit_value numeric,
    ADD ATTRIBUTE used numeric,
    ADD ATTRIBUTE held numeric,
    ADD ATTRIBUTE retryable boolean;

-- Durable budget alerts: every alert that pg_notify sends is also a row,
-- written in the recording transaction (so it commits or rolls back with
-- the usage that crossed the threshold), once per user, month and
-- threshold.  A listener that was down loses nothing: poll the rows that
-- are not acknowledged, then acknowledge them.
CREATE TABLE @extschema@.ai_alerts (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at        timestamptz NOT NULL,
    user_id           text NOT NULL,
    plan              text NOT NULL,
    month             date NOT NULL,
    threshold_percent integer NOT NULL,
    spend_cents       numeric NOT NULL,
    budget_cents      numeric NOT NULL,
    acknowledged_at   timestamptz,
    CONSTRAINT ai_alerts_once UNIQUE (user_id, month, threshold_percent)
);
CREATE INDEX ai_alerts_open_idx ON @extschema@.ai_alerts (id) WHERE acknowledged_at IS NULL;
COMMENT ON TABLE @extschema@.ai_alerts IS
    'ai_ratelimit: budget alerts, one row per user, month (first day, in ai_ratelimit.timezone) and threshold crossed; set acknowledged_at when handled';
COMMENT ON SEQUENCE @extschema@.ai_alerts_id_seq IS
    'ids of ai_alerts rows';
REVOKE ALL ON @extschema@.ai_alerts FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_alerts', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_alerts_id_seq', '');

-- Every limit that applies to a user now, counting nothing: for rate-limit
-- headers (RateLimit-Policy, RateLimit, Retry-After), by the application
-- role, without reading the configuration tables.
CREATE FUNCTION @extschema@.ai_limit_state(
    user_id text, plan text DEFAULT NULL,
    OUT layer text, OUT limit_value numeric, OUT used numeric, OUT held numeric,
    OUT remaining numeric, OUT reset_at timestamptz, OUT window_seconds integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'ai_limit_state'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_limit_state(text, text) IS
    'every limit that applies to a user now (limit, used, held, remaining, reset time, window), counting nothing: for rate-limit headers';
REVOKE ALL ON FUNCTION @extschema@.ai_limit_state(text, text) FROM PUBLIC;

-- Cache writes: Anthropic bills prompt-cache writes above the input price
-- (a 5-minute write at 1.25 times it, a 1-hour write at 2 times); NULL
-- prices a write as input (OpenAI bills its cache writes as input).
ALTER TABLE @extschema@.ai_model_prices
    ADD COLUMN cache_write_usd_per_mtok numeric,
    ADD COLUMN cache_write_1h_usd_per_mtok numeric,
    ADD CONSTRAINT ai_model_prices_cache_write CHECK (
        (cache_write_usd_per_mtok IS NULL
         OR (cache_write_usd_per_mtok OPERATOR(pg_catalog.>=) 0
             AND cache_write_usd_per_mtok OPERATOR(pg_catalog.<=) 10000
             AND pg_catalog.scale(cache_write_usd_per_mtok) OPERATOR(pg_catalog.<=) 5))
        AND (cache_write_1h_usd_per_mtok IS NULL
             OR (cache_write_1h_usd_per_mtok OPERATOR(pg_catalog.>=) 0
                 AND cache_write_1h_usd_per_mtok OPERATOR(pg_catalog.<=) 10000
                 AND pg_catalog.scale(cache_write_1h_usd_per_mtok) OPERATOR(pg_catalog.<=) 5)));
COMMENT ON COLUMN @extschema@.ai_model_prices.cache_write_usd_per_mtok IS
    'USD per million prompt-cache write tokens (5-minute cache); NULL: the input price';
COMMENT ON COLUMN @extschema@.ai_model_prices.cache_write_1h_usd_per_mtok IS
    'USD per million prompt-cache write tokens (1-hour cache); NULL: the 5-minute write price';

-- seeds still as installed get the vendor's multipliers; the fallback row
-- stays at the highest seeded price of each kind
UPDATE @extschema@.ai_model_prices p
   SET cache_write_usd_per_mtok = 3.75, cache_write_1h_usd_per_mtok = 6
 WHERE p.model OPERATOR(pg_catalog.=) ANY (ARRAY['claude-sonnet-4-6', '*'])
   AND @extschema@.ai_price_is_seed(p);

CREATE OR REPLACE FUNCTION @extschema@.ai_price_is_seed(p @extschema@.ai_model_prices)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (p.model, p.input_usd_per_mtok, p.output_usd_per_mtok, p.cached_input_usd_per_mtok,
            p.cache_write_usd_per_mtok, p.cache_write_1h_usd_per_mtok)
           IS NOT DISTINCT FROM
           (CASE p.model
                WHEN 'claude-sonnet-4-6' THEN ROW('claude-sonnet-4-6'::text, 3::numeric, 15::numeric, 0.30::numeric, 3.75::numeric, 6::numeric)
                WHEN 'gpt-4o'            THEN ROW('gpt-4o'::text, 2.50::numeric, 10::numeric, 1.25::numeric, NULL::numeric, NULL::numeric)
                WHEN '*'                 THEN ROW('*'::text, 3::numeric, 15::numeric, 1.25::numeric, 3.75::numeric, 6::numeric)
            END)
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
               cached_input_usd_per_mtok = NEW.cached_input_usd_per_mtok,
               cache_write_usd_per_mtok = NEW.cache_write_usd_per_mtok,
               cache_write_1h_usd_per_mtok = NEW.cache_write_1h_usd_per_mtok
         WHERE t.model OPERATOR(pg_catalog.=) NEW.model AND @extschema@.ai_price_is_seed(t);
    END IF;
    IF FOUND THEN
        RETURN NULL;            -- the seed now holds the new values
    END IF;
    RETURN NEW;
END
$$;

-- Usage rows and their per-day totals count cache writes too.
ALTER TABLE @extschema@.ai_usage
    ADD COLUMN cache_write_tokens bigint NOT NULL DEFAULT 0
        CHECK (cache_write_tokens OPERATOR(pg_catalog.>=) 0),
    ADD COLUMN cache_write_1h_tokens bigint NOT NULL DEFAULT 0
        CHECK (cache_write_1h_tokens OPERATOR(pg_catalog.>=) 0);
ALTER TABLE @extschema@.ai_usage_archive
    ADD COLUMN cache_write_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN cache_write_1h_tokens bigint NOT NULL DEFAULT 0;

CREATE OR REPLACE VIEW @extschema@.ai_usage_daily AS
SELECT user_id, day, model,
       pg_catalog.sum(calls)::bigint                 AS calls,
       pg_catalog.sum(input_tokens)::bigint          AS input_tokens,
       pg_catalog.sum(output_tokens)::bigint         AS output_tokens,
       pg_catalog.sum(cached_input_tokens)::bigint   AS cached_input_tokens,
       pg_catalog.sum(cost_cents)                    AS cost_cents,
       pg_catalog.sum(cache_write_tokens)::bigint    AS cache_write_tokens,
       pg_catalog.sum(cache_write_1h_tokens)::bigint AS cache_write_1h_tokens
FROM (
    SELECT user_id, day, model, 1::bigint AS calls, input_tokens, output_tokens,
           cached_input_tokens, cost_cents, cache_write_tokens, cache_write_1h_tokens
    FROM @extschema@.ai_usage
    UNION ALL
    SELECT user_id, day, model, calls, input_tokens, output_tokens,
           cached_input_tokens, cost_cents, cache_write_tokens, cache_write_1h_tokens
    FROM @extschema@.ai_usage_archive
) u
GROUP BY user_id, day, model;

CREATE OR REPLACE FUNCTION @extschema@.ai_purge_usage(older_than interval)
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
        RETURNING user_id, day, model, input_tokens, output_tokens, cached_input_tokens, cost_cents,
                  cache_write_tokens, cache_write_1h_tokens
    ), totals AS (
        SELECT user_id, day, model, pg_catalog.count(*) AS calls,
               pg_catalog.sum(input_tokens)::bigint AS input_tokens,
               pg_catalog.sum(output_tokens)::bigint AS output_tokens,
               pg_catalog.sum(cached_input_tokens)::bigint AS cached_input_tokens,
               pg_catalog.sum(cost_cents) AS cost_cents,
               pg_catalog.sum(cache_write_tokens)::bigint AS cache_write_tokens,
               pg_catalog.sum(cache_write_1h_tokens)::bigint AS cache_write_1h_tokens
          FROM moved GROUP BY user_id, day, model
    ), merged AS (
        INSERT INTO @extschema@.ai_usage_archive AS a
               (user_id, day, model, calls, input_tokens, output_tokens, cached_input_tokens,
                cost_cents, cache_write_tokens, cache_write_1h_tokens)
        SELECT * FROM totals
        ON CONFLICT (user_id, day, model) DO UPDATE
           SET calls = a.calls OPERATOR(pg_catalog.+) excluded.calls,
               input_tokens = a.input_tokens OPERATOR(pg_catalog.+) excluded.input_tokens,
               output_tokens = a.output_tokens OPERATOR(pg_catalog.+) excluded.output_tokens,
               cached_input_tokens = a.cached_input_tokens OPERATOR(pg_catalog.+) excluded.cached_input_tokens,
               cost_cents = a.cost_cents OPERATOR(pg_catalog.+) excluded.cost_cents,
               cache_write_tokens = a.cache_write_tokens OPERATOR(pg_catalog.+) excluded.cache_write_tokens,
               cache_write_1h_tokens = a.cache_write_1h_tokens OPERATOR(pg_catalog.+) excluded.cache_write_1h_tokens
        RETURNING 1
    )
    SELECT COALESCE(pg_catalog.sum(calls), 0)::bigint INTO purged FROM totals;
    RETURN purged;
END
$$;

-- Recording with cache writes: every argument named (a form with defaults
-- would make the 6-argument calls ambiguous); grants on the 6-argument
-- function stay as they are.
CREATE FUNCTION @extschema@.ai_record_usage(
    user_id text, model text, input_tokens bigint, output_tokens bigint,
    cached_input_tokens bigint, reservation_id bigint,
    cache_write_tokens bigint, cache_write_1h_tokens bigint)
RETURNS numeric
AS 'MODULE_PATHNAME', 'ai_record_usage'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_record_usage(text, text, bigint, bigint, bigint, bigint, bigint, bigint) IS
    'record one AI call with its prompt-cache writes (5-minute and 1-hour) and return its exact cost in cents';
REVOKE ALL ON FUNCTION @extschema@.ai_record_usage(text, text, bigint, bigint, bigint, bigint, bigint, bigint) FROM PUBLIC;

-- The most a call can cost before it is made: the estimate for a check.
CREATE FUNCTION @extschema@.ai_estimate_cost(model text, input_tokens bigint, max_output_tokens bigint)
RETURNS numeric
AS 'MODULE_PATHNAME', 'ai_estimate_cost'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.ai_estimate_cost(text, bigint, bigint) IS
    'the most a call can cost: input tokens at the input price and every output token it may produce at the output price, in cents, from ai_model_prices';
REVOKE ALL ON FUNCTION @extschema@.ai_estimate_cost(text, bigint, bigint) FROM PUBLIC;
