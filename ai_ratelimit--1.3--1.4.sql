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
    'forget one user''s burst, daily and token counts; estimates of requests in flight stay held until recorded or expired; recorded spend stays (operators only)';
