-- ai_ratelimit 1.6 -> 1.7
\echo Use "ALTER EXTENSION ai_ratelimit UPDATE TO '1.7'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Today's totals too.  ai_compact_usage() now also totals the open days up
-- to an hour boundary that no open transaction can still record before, so
-- a budget load reads the rows of the last hour or so, not of the whole day,
-- whatever the user's history (the first check after a crash reads its
-- spend from the tables).  Such a total says where it stops: upto.
-- ---------------------------------------------------------------------------

ALTER TABLE @extschema@.ai_usage_days ADD COLUMN upto timestamptz;
COMMENT ON COLUMN @extschema@.ai_usage_days.upto IS
    'NULL: the whole day; otherwise the rows of the day created before this time (the later ones are read from the log)';
COMMENT ON TABLE @extschema@.ai_usage_days IS
    'ai_ratelimit: per-day totals of ai_usage (ai_compact_usage): closed days whole, open days up to upto; read by budget loads';

-- the rows of a day after a time, found without reading the day's others
CREATE INDEX ai_usage_user_day_time_idx ON @extschema@.ai_usage (user_id, day, created_at);
DROP INDEX @extschema@.ai_usage_user_day_idx;

CREATE FUNCTION @extschema@.ai_ratelimit_oldest_open_record()
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'ai_ratelimit_oldest_open_record'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.ai_ratelimit_oldest_open_record() IS
    'when the oldest transaction still open first called ai_record_usage, or now when none has (for ai_compact_usage)';
REVOKE ALL ON FUNCTION @extschema@.ai_ratelimit_oldest_open_record() FROM PUBLIC;

-- Total the closed days whole and the open ones up to upto.
--
-- An ai_record_usage row is labelled with the local day it was recorded on
-- and created at the time it was recorded, and every transaction that
-- records publishes, in shared memory, when it first did
-- (ai_ratelimit_oldest_open_record(), which does not depend on
-- track_activities).  So no open transaction can still add a row created
-- before that record, nor one labelled with a day more than two days
-- before its date here, in any time zone (zones are at most 26 hours
-- apart, so a session that has not reloaded a new ai_ratelimit.timezone,
-- or has, cannot label further back).  Those earlier days are closed and
-- totalled whole; the later ones are open and totalled up to an hour
-- boundary at least five minutes before that record (room for a clock step
-- back), which no zone can move.  Rows written another way mark
-- their day (ai_usage_days_stale), so a row committed after this snapshot
-- never hides behind a total.  Days of the last two months are totalled;
-- older ones are read from the log.  Runs at READ COMMITTED only, where each
-- statement below sees every transaction that ended before it.  Returns the
-- totals written.  Run it hourly or daily (cron or pg_cron).
CREATE OR REPLACE FUNCTION @extschema@.ai_compact_usage()
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    closed date;
    oldest timestamptz;
    cut timestamptz;
    written bigint;
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RAISE EXCEPTION 'ai_compact_usage() cannot run on a standby'
            USING ERRCODE = 'read_only_sql_transaction',
                  HINT = 'Run it on the primary; the totals reach standbys through the WAL.';
    END IF;
    IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed' THEN
        RAISE EXCEPTION 'ai_compact_usage() must run at READ COMMITTED'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'A snapshot older than the call could miss rows of transactions that ended before it.',
                  HINT = 'Call it in a transaction of its own.';
    END IF;
    -- one at a time; budget loads read on (EXCLUSIVE lets readers in)
    LOCK TABLE @extschema@.ai_usage_days IN EXCLUSIVE MODE;
    oldest := @extschema@.ai_ratelimit_oldest_open_record();
    closed := pg_catalog.timezone(pg_catalog.current_setting('ai_ratelimit.timezone'), oldest)::date
              OPERATOR(pg_catalog.-) 2;
    cut := pg_catalog.date_trunc('hour', oldest OPERATOR(pg_catalog.-) '5 minutes'::pg_catalog.interval);
    -- days that changed since they were totalled: total them again
    WITH marked AS (
        DELETE FROM @extschema@.ai_usage_days_stale
        RETURNING user_id, day
    )
    DELETE FROM @extschema@.ai_usage_days d
     USING (SELECT DISTINCT user_id, day FROM marked) m
     WHERE d.user_id OPERATOR(pg_catalog.=) m.user_id AND d.day OPERATOR(pg_catalog.=) m.day;
    -- the open days, and the parts of days totalled before, are totalled anew
    DELETE FROM @extschema@.ai_usage_days
     WHERE day OPERATOR(pg_catalog.>=) closed OR upto IS NOT NULL;
    INSERT INTO @extschema@.ai_usage_days
           (user_id, day, model, calls, input_tokens, output_tokens, cached_input_tokens,
            cache_write_tokens, cache_write_1h_tokens, cost_cents, upto)
    SELECT u.user_id, u.day, u.model, pg_catalog.count(*),
           pg_catalog.sum(u.input_tokens)::bigint, pg_catalog.sum(u.output_tokens)::bigint,
           pg_catalog.sum(u.cached_input_tokens)::bigint, pg_catalog.sum(u.cache_write_tokens)::bigint,
           pg_catalog.sum(u.cache_write_1h_tokens)::bigint, pg_catalog.sum(u.cost_cents),
           CASE WHEN u.day OPERATOR(pg_catalog.>=) closed THEN cut END
      FROM @extschema@.ai_usage u
     WHERE (u.day OPERATOR(pg_catalog.>=) (closed OPERATOR(pg_catalog.-) 62)
            AND u.day OPERATOR(pg_catalog.<) closed
            AND NOT EXISTS (SELECT 1 FROM @extschema@.ai_usage_days d
                             WHERE d.user_id OPERATOR(pg_catalog.=) u.user_id
                               AND d.day OPERATOR(pg_catalog.=) u.day))
        OR (u.day OPERATOR(pg_catalog.>=) closed AND u.created_at OPERATOR(pg_catalog.<) cut)
     GROUP BY u.user_id, u.day, u.model;
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END
$$;
COMMENT ON FUNCTION @extschema@.ai_compact_usage() IS
    'total ai_usage into ai_usage_days: closed days whole, open ones up to an hour before the oldest open record; run hourly or daily';
REVOKE ALL ON FUNCTION @extschema@.ai_compact_usage() FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Rule revisions.  A reservation keeps the highest revision of ai_rules its
-- check knew; a rule inserted or changed later (a higher revision) may take
-- in the reservation's model, which the check could not name, so the
-- reservation holds its estimate there too until it settles.  Without this,
-- a model rule added while a request was in flight missed that request's
-- estimate, and a second request could pass the new cap.
-- ---------------------------------------------------------------------------

CREATE SEQUENCE @extschema@.ai_rules_revision_seq AS integer;
COMMENT ON SEQUENCE @extschema@.ai_rules_revision_seq IS
    'ai_ratelimit: revisions of ai_rules rows';
ALTER TABLE @extschema@.ai_rules
    ADD COLUMN revision integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN @extschema@.ai_rules.revision IS
    'set by the extension at every insert and update (the value written is ignored)';

CREATE FUNCTION @extschema@.ai_rules_revise()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.revision := pg_catalog.nextval('@extschema@.ai_rules_revision_seq'::pg_catalog.regclass);
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@.ai_rules_revise() IS
    'trigger: a new revision for every rule inserted or changed';
REVOKE ALL ON FUNCTION @extschema@.ai_rules_revise() FROM PUBLIC;
CREATE TRIGGER ai_rules_revised
    BEFORE INSERT OR UPDATE ON @extschema@.ai_rules
    FOR EACH ROW EXECUTE FUNCTION @extschema@.ai_rules_revise();
ALTER TABLE @extschema@.ai_rules ENABLE ALWAYS TRIGGER ai_rules_revised;
UPDATE @extschema@.ai_rules SET revision = 0;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_rules_revision_seq', '');
