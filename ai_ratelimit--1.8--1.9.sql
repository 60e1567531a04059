-- ai_ratelimit 1.8 -> 1.9
\echo Use "ALTER EXTENSION ai_ratelimit UPDATE TO '1.9'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- The reservation is the contract.  An application releases and extends
-- reservations by id and user: an id names one user's request, and another
-- user's id releases nothing.  The one-argument release stays for the
-- owner (an operator giving back an estimate by id alone); on update, every
-- role that may execute it gets the two-argument form instead.
-- ---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ai_release_reservation(reservation_id bigint, user_id text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'ai_release_reservation'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_release_reservation(bigint, text) IS
    'give back the estimate of one request of this user (its AI call failed or was abandoned): on the user and every account its check charged; another user''s reservation is not touched';
REVOKE ALL ON FUNCTION @extschema@.ai_release_reservation(bigint, text) FROM PUBLIC;

CREATE FUNCTION @extschema@.ai_extend_reservation(reservation_id bigint, user_id text, seconds integer)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'ai_extend_reservation'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_extend_reservation(bigint, text, integer) IS
    'hold the estimate of a request in flight until seconds from now (never shorter), on the user and every account its check charged; the new expiry, or NULL when it is no longer open';
REVOKE ALL ON FUNCTION @extschema@.ai_extend_reservation(bigint, text, integer) FROM PUBLIC;

DO $$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT a.grantee, a.is_grantable
        FROM pg_catalog.pg_proc p, LATERAL pg_catalog.aclexplode(p.proacl) a
        WHERE p.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure('@extschema@.ai_release_reservation(bigint)')
          AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
          AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
    LOOP
        EXECUTE pg_catalog.format(
            'GRANT EXECUTE ON FUNCTION @extschema@.ai_release_reservation(bigint, text), @extschema@.ai_extend_reservation(bigint, text, integer) TO %s%s',
            CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE g.grantee::pg_catalog.regrole::text END,
            CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        EXECUTE pg_catalog.format(
            'REVOKE EXECUTE ON FUNCTION @extschema@.ai_release_reservation(bigint) FROM %s',
            CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE g.grantee::pg_catalog.regrole::text END);
    END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.ai_release_reservation(bigint) IS
    'give back the estimate of a request by its id alone, whoever''s it is (for the owner; applications use ai_release_reservation(reservation_id, user_id))';

-- ---------------------------------------------------------------------------
-- Model families.  A provider's dated name (gpt-4o-2024-08-06,
-- claude-sonnet-4-5-20250929) is priced by its own row of ai_model_prices,
-- else by its family's (the name without its date), and counted by every
-- rule that names the family.  ai_model_family says what a name's family
-- is; ai_explain_limits shows it, and the price row that prices the model.
-- ---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ai_model_family(model text)
RETURNS text
AS 'MODULE_PATHNAME', 'ai_model_family'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.ai_model_family(text) IS
    'the family of a model''s name: the name without a date at its end (-YYYY-MM-DD, -YYYYMMDD or @YYYYMMDD), or the name itself';

-- A rule's window is one the library knows (its table of windows): a new
-- window needs no new constraint.  The constraint keeps its name.
CREATE FUNCTION @extschema@.ai_window_known("window" text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'ai_window_known'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.ai_window_known(text) IS
    'is this a window a rule may count over (ai_rules.window), one of the library''s table of windows';
ALTER TABLE @extschema@.ai_rules
    DROP CONSTRAINT ai_rules_window,
    ADD CONSTRAINT ai_rules_window CHECK (@extschema@.ai_window_known("window"));

DO $$
DECLARE
    acl aclitem[];
    g record;
BEGIN
    SELECT p.proacl INTO acl FROM pg_catalog.pg_proc p
    WHERE p.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure('@extschema@.ai_explain_limits(text, text, text, text)');

    DROP FUNCTION @extschema@.ai_explain_limits(text, text, text, text);
    CREATE FUNCTION @extschema@.ai_explain_limits(
        user_id text,
        model text DEFAULT NULL,
        plan text DEFAULT NULL,
        account text DEFAULT NULL,
        OUT rule_id integer,
        OUT scope text,
        OUT scope_id text,
        OUT model_selector text,
        OUT metric text,
        OUT "window" text,
        OUT max_value numeric,
        OUT used numeric,
        OUT held numeric,
        OUT remaining numeric,
        OUT resets_at timestamptz,
        OUT model_family text,
        OUT priced_as text)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'ai_explain_limits'
    LANGUAGE C VOLATILE PARALLEL UNSAFE;
    COMMENT ON FUNCTION @extschema@.ai_explain_limits(text, text, text, text) IS
        'every limit that applies to a user (and a model), as a member and on the account charged and those above it: its maximum, what is used, held by requests in flight and left, and when it resets; the family the model''s name counts as and the price row that prices it; changes nothing';
    REVOKE ALL ON FUNCTION @extschema@.ai_explain_limits(text, text, text, text) FROM PUBLIC;

    FOR g IN
        SELECT a.grantee, a.is_grantable
        FROM pg_catalog.pg_proc p,
             LATERAL pg_catalog.aclexplode(COALESCE(acl, pg_catalog.acldefault('f', p.proowner))) a
        WHERE p.oid OPERATOR(pg_catalog.=) '@extschema@.ai_explain_limits(text, text, text, text)'::pg_catalog.regprocedure
          AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
          AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
    LOOP
        EXECUTE pg_catalog.format(
            'GRANT EXECUTE ON FUNCTION @extschema@.ai_explain_limits(text, text, text, text) TO %s%s',
            CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE g.grantee::pg_catalog.regrole::text END,
            CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------
-- Each account's spend against each of its caps, for operators and
-- dashboards: the rows ai_explain_limits shows for the account itself.
-- ---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ai_account_limits(
    account_id text DEFAULT NULL,
    OUT rule_id integer,
    OUT scope text,
    OUT scope_id text,
    OUT model_selector text,
    OUT metric text,
    OUT "window" text,
    OUT max_value numeric,
    OUT used numeric,
    OUT held numeric,
    OUT remaining numeric,
    OUT resets_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'ai_account_limits'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_account_limits(text) IS
    'every rule on an account (NULL: on every account): its maximum, what the account and those below it used, what requests in flight hold, what is left and when it resets; changes nothing';
REVOKE ALL ON FUNCTION @extschema@.ai_account_limits(text) FROM PUBLIC;

CREATE VIEW @extschema@.ai_account_caps AS
SELECT l.scope_id AS account_id, a.parent_id, l.rule_id, l.model_selector, l.metric, l."window",
       l.max_value, l.used, l.held, l.remaining,
       CASE WHEN l.max_value OPERATOR(pg_catalog.>) 0
            THEN pg_catalog.round(l.used OPERATOR(pg_catalog.*) 100 OPERATOR(pg_catalog./) l.max_value, 2) END AS used_percent,
       l.resets_at
FROM @extschema@.ai_account_limits() l
LEFT JOIN @extschema@.ai_accounts a ON a.account_id OPERATOR(pg_catalog.=) l.scope_id;
COMMENT ON VIEW @extschema@.ai_account_caps IS
    'ai_ratelimit: one row per account and rule on it: the cap, what the account and the accounts below it used in the window, what requests in flight hold, what is left, the percent used and when the window resets';
REVOKE ALL ON @extschema@.ai_account_caps FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Rate-limit headers from the check's own row.  ratelimit_policy and
-- ratelimit are the IETF RateLimit-Policy and RateLimit field values of the
-- limit the answer speaks of: for an allowed request the limit it left
-- with the least room, for a refusal the refusing one; NULL when no limit
-- applies.  An application copies them into its response as they are.
-- ---------------------------------------------------------------------------

ALTER TYPE @extschema@.ai_limit_result
    ADD ATTRIBUTE ratelimit text,
    ADD ATTRIBUTE ratelimit_policy text;
COMMENT ON COLUMN @extschema@.ai_limit_result.ratelimit IS
    'the RateLimit header field value: "<limit>";r=<what it leaves>;t=<seconds until it is whole again, or a retry may pass>';
COMMENT ON COLUMN @extschema@.ai_limit_result.ratelimit_policy IS
    'the RateLimit-Policy header field value: "<limit>";q=<quota>;w=<window seconds>[;qu="tokens"|"cents"]';
