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
