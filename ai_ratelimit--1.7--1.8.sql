-- ai_ratelimit 1.7 -> 1.8
\echo Use "ALTER EXTENSION ai_ratelimit UPDATE TO '1.8'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Accounts: organisations, teams and the users in them.  Accounts form a
-- tree (an account's parent_id names the account it belongs to), at most
-- eight levels deep and without cycles; users are members of accounts, with
-- at most one default account each.  Both tables are kept by pg_dump.
-- ---------------------------------------------------------------------------

CREATE TABLE @extschema@.ai_accounts (
    account_id  text PRIMARY KEY
        CONSTRAINT ai_accounts_id CHECK (pg_catalog.octet_length(account_id) OPERATOR(pg_catalog.>=) 1
                                         AND pg_catalog.octet_length(account_id) OPERATOR(pg_catalog.<=) 256),
    parent_id   text REFERENCES @extschema@.ai_accounts (account_id),
    name        text,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    alert_percents integer[]
        CONSTRAINT ai_accounts_alert_percents
        CHECK (pg_catalog.cardinality(alert_percents) OPERATOR(pg_catalog.<=) 8
               AND pg_catalog.array_position(alert_percents, NULL) IS NULL
               AND 1 OPERATOR(pg_catalog.<=) ALL (alert_percents)
               AND 1000 OPERATOR(pg_catalog.>=) ALL (alert_percents)),
    CONSTRAINT ai_accounts_not_own_parent CHECK (parent_id OPERATOR(pg_catalog.<>) account_id)
);
COMMENT ON COLUMN @extschema@.ai_accounts.alert_percents IS
    'percents of each cents rule on the account whose crossing raises an alert (ai_account_alerts and pg_notify), once per rule, window and threshold';
COMMENT ON TABLE @extschema@.ai_accounts IS
    'ai_ratelimit: accounts (organisation, team, ...) as a tree: parent_id is the account this one belongs to';
CREATE INDEX ai_accounts_parent_idx ON @extschema@.ai_accounts (parent_id);

CREATE TABLE @extschema@.ai_account_members (
    account_id  text NOT NULL REFERENCES @extschema@.ai_accounts (account_id) ON DELETE CASCADE,
    user_id     text NOT NULL
        CONSTRAINT ai_account_members_user CHECK (pg_catalog.octet_length(user_id) OPERATOR(pg_catalog.>=) 1
                                                  AND pg_catalog.octet_length(user_id) OPERATOR(pg_catalog.<=) 256),
    is_default  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (account_id, user_id)
);
COMMENT ON TABLE @extschema@.ai_account_members IS
    'ai_ratelimit: which users belong to which accounts; is_default marks the account a check uses when it names none';
CREATE UNIQUE INDEX ai_account_members_one_default
    ON @extschema@.ai_account_members (user_id) WHERE is_default;
CREATE INDEX ai_account_members_user_idx ON @extschema@.ai_account_members (user_id);

-- The tree stays a tree: an account is never its own ancestor, and no chain
-- is longer than eight accounts.  Changes of parent are serialised (a
-- transaction-level advisory lock keyed by the table) and run at READ
-- COMMITTED, so each sees the last one committed and two transactions
-- cannot each add half of a cycle.  An account's id never
-- changes: its counters and usage rows are filed under it.
CREATE FUNCTION @extschema@.ai_accounts_check_tree()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    above integer;
    below integer;
    cycle boolean;
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE'
       AND NEW.account_id OPERATOR(pg_catalog.<>) OLD.account_id THEN
        RAISE EXCEPTION 'an account''s id cannot change'
            USING ERRCODE = 'integrity_constraint_violation',
                  DETAIL = pg_catalog.format('Account %s would become %s.', OLD.account_id, NEW.account_id),
                  HINT = 'Create an account with the new id and move the members and sub-accounts to it.';
    END IF;
    IF NEW.parent_id IS NULL
       OR (TG_OP OPERATOR(pg_catalog.=) 'UPDATE'
           AND NEW.parent_id OPERATOR(pg_catalog.=) OLD.parent_id) THEN
        RETURN NEW;             -- no new edge in the tree
    END IF;
    -- one change of the tree at a time, each seeing the last one committed
    IF pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed' THEN
        RAISE EXCEPTION 'the account tree can change only at READ COMMITTED'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'A snapshot older than the statement could miss a change that makes a cycle.',
                  HINT = 'Change parent_id in a READ COMMITTED transaction.';
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(TG_RELID::integer, 0);
    -- the chain above the new parent: does it reach this account, and how long is it
    WITH RECURSIVE up(id, depth, seen) AS (
        SELECT a.account_id, 1, ARRAY[a.account_id]
          FROM @extschema@.ai_accounts a WHERE a.account_id OPERATOR(pg_catalog.=) NEW.parent_id
        UNION ALL
        SELECT a.parent_id, up.depth OPERATOR(pg_catalog.+) 1, up.seen OPERATOR(pg_catalog.||) a.parent_id
          FROM up JOIN @extschema@.ai_accounts a ON a.account_id OPERATOR(pg_catalog.=) up.id
         WHERE a.parent_id IS NOT NULL AND up.depth OPERATOR(pg_catalog.<) 64
           AND NOT a.parent_id OPERATOR(pg_catalog.=) ANY (up.seen)
    )
    SELECT pg_catalog.max(depth), pg_catalog.bool_or(id OPERATOR(pg_catalog.=) NEW.account_id)
      INTO above, cycle FROM up;
    IF cycle THEN
        RAISE EXCEPTION 'account "%" cannot belong to "%": it would be its own ancestor',
                        NEW.account_id, NEW.parent_id
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'ai_accounts_tree',
                  DETAIL = 'Accounts form a tree: an account belongs to at most one parent, and never to one of its own sub-accounts.';
    END IF;
    -- the levels below this account come along when it moves
    WITH RECURSIVE down(id, depth) AS (
        SELECT NEW.account_id, 1
        UNION ALL
        SELECT a.account_id, down.depth OPERATOR(pg_catalog.+) 1
          FROM down JOIN @extschema@.ai_accounts a ON a.parent_id OPERATOR(pg_catalog.=) down.id
         WHERE down.depth OPERATOR(pg_catalog.<) 64
    )
    SELECT pg_catalog.max(depth) INTO below FROM down;
    IF coalesce(above, 0) OPERATOR(pg_catalog.+) below OPERATOR(pg_catalog.>) 8 THEN
        RAISE EXCEPTION 'account "%" under "%" would make a chain of % accounts',
                        NEW.account_id, NEW.parent_id, coalesce(above, 0) OPERATOR(pg_catalog.+) below
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'ai_accounts_tree',
                  DETAIL = 'An account may have at most eight levels from its root down to its deepest sub-account.';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION @extschema@.ai_accounts_check_tree() IS
    'trigger: accounts form a tree, without cycles, at most eight levels deep';
REVOKE ALL ON FUNCTION @extschema@.ai_accounts_check_tree() FROM PUBLIC;
CREATE TRIGGER ai_accounts_tree
    BEFORE INSERT OR UPDATE ON @extschema@.ai_accounts
    FOR EACH ROW EXECUTE FUNCTION @extschema@.ai_accounts_check_tree();
ALTER TABLE @extschema@.ai_accounts ENABLE ALWAYS TRIGGER ai_accounts_tree;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_accounts', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_account_members', '');
REVOKE ALL ON TABLE @extschema@.ai_accounts, @extschema@.ai_account_members FROM PUBLIC;

-- every session reads the tree again after a change commits, and a user's
-- memberships after a change of that user's
CREATE TRIGGER ai_account_members_changed
    AFTER INSERT OR UPDATE OR DELETE ON @extschema@.ai_account_members
    FOR EACH ROW EXECUTE FUNCTION @extschema@.ai_ratelimit_config_changed('members');
CREATE TRIGGER ai_account_members_truncated
    AFTER TRUNCATE ON @extschema@.ai_account_members
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.ai_ratelimit_config_changed('members');
CREATE TRIGGER ai_accounts_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.ai_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.ai_ratelimit_config_changed('accounts');

CREATE FUNCTION @extschema@.ai_account_chain(
    account_id text,
    OUT level integer,
    OUT account_id text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'ai_account_chain_srf'
LANGUAGE C STRICT STABLE;
COMMENT ON FUNCTION @extschema@.ai_account_chain(text) IS
    'the accounts a check for this account charges: itself (level 0), then each account above it up to its root';
REVOKE ALL ON FUNCTION @extschema@.ai_account_chain(text) FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Usage filed under accounts: ai_record_usage writes the account a call is
-- charged to (the user's default account) into ai_usage.account_id, and
-- ai_purge_usage keeps it in the archive, so an account's spend is exact
-- from the tables, whatever path its rows took.
-- ---------------------------------------------------------------------------

ALTER TABLE @extschema@.ai_usage ADD COLUMN account_id text;
COMMENT ON COLUMN @extschema@.ai_usage.account_id IS
    'the account the call was charged to (1.8), or NULL';
CREATE INDEX ai_usage_account_day_idx ON @extschema@.ai_usage (account_id, day)
    WHERE account_id IS NOT NULL;

ALTER TABLE @extschema@.ai_usage_archive ADD COLUMN account_id text NOT NULL DEFAULT '';
COMMENT ON COLUMN @extschema@.ai_usage_archive.account_id IS
    'the account of the purged rows, or the empty string for none';
ALTER TABLE @extschema@.ai_usage_archive DROP CONSTRAINT ai_usage_archive_pkey;
ALTER TABLE @extschema@.ai_usage_archive ADD PRIMARY KEY (user_id, day, model, account_id);
CREATE INDEX ai_usage_archive_account_day_idx ON @extschema@.ai_usage_archive (account_id, day)
    WHERE account_id OPERATOR(pg_catalog.<>) '';

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
                  cache_write_tokens, cache_write_1h_tokens, COALESCE(account_id, '') AS account_id
    ), totals AS (
        SELECT user_id, day, model, pg_catalog.count(*) AS calls,
               pg_catalog.sum(input_tokens)::bigint AS input_tokens,
               pg_catalog.sum(output_tokens)::bigint AS output_tokens,
               pg_catalog.sum(cached_input_tokens)::bigint AS cached_input_tokens,
               pg_catalog.sum(cost_cents) AS cost_cents,
               pg_catalog.sum(cache_write_tokens)::bigint AS cache_write_tokens,
               pg_catalog.sum(cache_write_1h_tokens)::bigint AS cache_write_1h_tokens,
               account_id
          FROM moved GROUP BY user_id, day, model, account_id
    ), merged AS (
        INSERT INTO @extschema@.ai_usage_archive AS a
               (user_id, day, model, calls, input_tokens, output_tokens, cached_input_tokens,
                cost_cents, cache_write_tokens, cache_write_1h_tokens, account_id)
        SELECT * FROM totals
        ON CONFLICT (user_id, day, model, account_id) DO UPDATE
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

-- An account's spend in a month, from the tables: its own calls and those
-- of every account below it, in the log and the archive.
CREATE FUNCTION @extschema@.ai_account_spend(account_id text, month date DEFAULT NULL)
RETURNS numeric
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE below(id) AS (
        SELECT $1
        UNION
        SELECT a.account_id FROM @extschema@.ai_accounts a JOIN below b ON a.parent_id OPERATOR(pg_catalog.=) b.id
    ), m AS (
        SELECT pg_catalog.date_trunc('month', COALESCE($2,
                   pg_catalog.timezone(pg_catalog.current_setting('ai_ratelimit.timezone'), pg_catalog.now())::date))::date AS first
    ), w AS (
        SELECT m.first, (m.first OPERATOR(pg_catalog.+) '1 month'::pg_catalog.interval)::date AS next FROM m
    )
    SELECT COALESCE(pg_catalog.sum(x), 0) FROM (
        SELECT u.cost_cents AS x FROM @extschema@.ai_usage u, w
         WHERE u.account_id OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT id FROM below))
           AND u.day OPERATOR(pg_catalog.>=) w.first AND u.day OPERATOR(pg_catalog.<) w.next
        UNION ALL
        SELECT a.cost_cents FROM @extschema@.ai_usage_archive a, w
         WHERE a.account_id OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT id FROM below))
           AND a.day OPERATOR(pg_catalog.>=) w.first AND a.day OPERATOR(pg_catalog.<) w.next
    ) s
$$;
COMMENT ON FUNCTION @extschema@.ai_account_spend(text, date) IS
    'cents spent in a month (default: this one) through an account and every account below it, from the tables';
REVOKE ALL ON FUNCTION @extschema@.ai_account_spend(text, date) FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Rules on accounts: scope 'account' binds the sum over an account and every
-- account below it; scope 'member' binds one user (member_id) inside one
-- account (scope_id) and the accounts below it.
-- ---------------------------------------------------------------------------

ALTER TABLE @extschema@.ai_rules
    ADD COLUMN member_id text
        CONSTRAINT ai_rules_member_id CHECK (pg_catalog.octet_length(member_id) OPERATOR(pg_catalog.>=) 1
                                             AND pg_catalog.octet_length(member_id) OPERATOR(pg_catalog.<=) 256);
COMMENT ON COLUMN @extschema@.ai_rules.member_id IS
    'scope member: the user the rule binds inside the account scope_id; NULL for every other scope';
ALTER TABLE @extschema@.ai_rules DROP CONSTRAINT ai_rules_scope;
ALTER TABLE @extschema@.ai_rules ADD CONSTRAINT ai_rules_scope
    CHECK (scope OPERATOR(pg_catalog.=) ANY (ARRAY['plan', 'user', 'account', 'member'])
           AND (scope OPERATOR(pg_catalog.=) 'member') OPERATOR(pg_catalog.=) (member_id IS NOT NULL));
ALTER TABLE @extschema@.ai_rules DROP CONSTRAINT ai_rules_once;
ALTER TABLE @extschema@.ai_rules ADD CONSTRAINT ai_rules_once
    UNIQUE NULLS NOT DISTINCT (scope, scope_id, member_id, model, metric, "window");
COMMENT ON TABLE @extschema@.ai_rules IS
    'ai_ratelimit: limits as data: scope (plan, user, account, or a member of an account) x model (*, exact, or prefix*) x metric (requests, tokens, cents) x window (minute, hour, day, week, month) x max_value';

-- ---------------------------------------------------------------------------
-- A check and a record name the account: account => '...' (the user must be
-- a member), or the user's default account is charged.  One function each
-- with every argument named; the earlier forms resolve to it unchanged, and
-- EXECUTE granted on them is granted on the new ones before they go.
-- ---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ai_check_limit(
    user_id text,
    plan text DEFAULT NULL,
    estimated_cost_cents numeric DEFAULT 0,
    estimated_tokens bigint DEFAULT NULL,
    model text DEFAULT NULL,
    input_tokens bigint DEFAULT NULL,
    max_output_tokens bigint DEFAULT NULL,
    account text DEFAULT NULL)
RETURNS @extschema@.ai_limit_result
AS 'MODULE_PATHNAME', 'ai_check_limit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_check_limit(text, text, numeric, bigint, text, bigint, bigint, text) IS
    'check and count one AI request against the user''s limits and those of the account charged (named, or the user''s default) and every account above it';

CREATE FUNCTION @extschema@.ai_enforce_limit(
    user_id text,
    plan text DEFAULT NULL,
    estimated_cost_cents numeric DEFAULT 0,
    estimated_tokens bigint DEFAULT NULL,
    model text DEFAULT NULL,
    input_tokens bigint DEFAULT NULL,
    max_output_tokens bigint DEFAULT NULL,
    account text DEFAULT NULL)
RETURNS @extschema@.ai_limit_result
AS 'MODULE_PATHNAME', 'ai_enforce_limit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_enforce_limit(text, text, numeric, bigint, text, bigint, bigint, text) IS
    'like ai_check_limit, but a refused request raises SQLSTATE 53400';

CREATE FUNCTION @extschema@.ai_record_usage(
    user_id text,
    model text,
    input_tokens bigint,
    output_tokens bigint,
    cached_input_tokens bigint DEFAULT 0,
    reservation_id bigint DEFAULT NULL,
    cache_write_tokens bigint DEFAULT 0,
    cache_write_1h_tokens bigint DEFAULT 0,
    account text DEFAULT NULL)
RETURNS numeric
AS 'MODULE_PATHNAME', 'ai_record_usage'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_record_usage(text, text, bigint, bigint, bigint, bigint, bigint, bigint, text) IS
    'record one AI call, filed under the account named (or the user''s default) and settled there and above it; returns its exact cost in cents';

CREATE FUNCTION @extschema@.ai_limit_state(
    user_id text, plan text DEFAULT NULL, account text DEFAULT NULL,
    OUT layer text, OUT limit_value numeric, OUT used numeric, OUT held numeric,
    OUT remaining numeric, OUT reset_at timestamptz, OUT window_seconds integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'ai_limit_state'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_limit_state(text, text, text) IS
    'every limit that applies to a user now, and to the account charged and those above it (limit, used, held, remaining, reset time, window), counting nothing: for rate-limit headers';

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
    OUT resets_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'ai_explain_limits'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_explain_limits(text, text, text, text) IS
    'every limit that applies to a user (and a model), as a member and on the account charged and those above it: its maximum, what is used, held by requests in flight and left, and when it resets; changes nothing';

REVOKE ALL ON FUNCTION @extschema@.ai_check_limit(text, text, numeric, bigint, text, bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_enforce_limit(text, text, numeric, bigint, text, bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_record_usage(text, text, bigint, bigint, bigint, bigint, bigint, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_limit_state(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_explain_limits(text, text, text, text) FROM PUBLIC;

DO $$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT DISTINCT f.new_args, p.proname::text AS fn, a.grantee, a.is_grantable
        FROM (VALUES
                ('ai_check_limit(text, text, numeric, bigint, text, bigint, bigint)',
                 'text, text, numeric, bigint, text, bigint, bigint, text'),
                ('ai_enforce_limit(text, text, numeric, bigint, text, bigint, bigint)',
                 'text, text, numeric, bigint, text, bigint, bigint, text'),
                ('ai_record_usage(text, text, bigint, bigint, bigint, bigint)',
                 'text, text, bigint, bigint, bigint, bigint, bigint, bigint, text'),
                ('ai_record_usage(text, text, bigint, bigint, bigint, bigint, bigint, bigint)',
                 'text, text, bigint, bigint, bigint, bigint, bigint, bigint, text'),
                ('ai_limit_state(text, text)', 'text, text, text'),
                ('ai_explain_limits(text, text, text)', 'text, text, text, text')) f(old, new_args),
             pg_catalog.pg_proc p, LATERAL pg_catalog.aclexplode(p.proacl) a
        WHERE p.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure('@extschema@.' OPERATOR(pg_catalog.||) f.old)
          AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
          AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
    LOOP
        EXECUTE pg_catalog.format(
            'GRANT EXECUTE ON FUNCTION @extschema@.%I(%s) TO %s%s',
            g.fn, g.new_args,
            CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE g.grantee::pg_catalog.regrole::text END,
            CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;

DROP FUNCTION @extschema@.ai_check_limit(text, text, numeric, bigint, text, bigint, bigint);
DROP FUNCTION @extschema@.ai_enforce_limit(text, text, numeric, bigint, text, bigint, bigint);
DROP FUNCTION @extschema@.ai_record_usage(text, text, bigint, bigint, bigint, bigint);
DROP FUNCTION @extschema@.ai_record_usage(text, text, bigint, bigint, bigint, bigint, bigint, bigint);
DROP FUNCTION @extschema@.ai_limit_state(text, text);
DROP FUNCTION @extschema@.ai_explain_limits(text, text, text);

-- ---------------------------------------------------------------------------
-- What each account holds now, as ai_ratelimit_status shows each user.
-- ---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ai_account_status(
    OUT account_id text,
    OUT open_reservations integer,
    OUT reserved_cents numeric,
    OUT records_in_flight bigint,
    OUT in_flight_cents numeric)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'ai_account_status'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.ai_account_status() IS
    'the rows of the view ai_account_status: live counters of each account of this database';
REVOKE ALL ON FUNCTION @extschema@.ai_account_status() FROM PUBLIC;

CREATE VIEW @extschema@.ai_account_status AS
    SELECT * FROM @extschema@.ai_account_status();
COMMENT ON VIEW @extschema@.ai_account_status IS
    'ai_ratelimit: one row per account of this database with live counters in shared memory: estimates its members'' requests in flight hold there, and records in flight filed under it or below it';
REVOKE ALL ON @extschema@.ai_account_status FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Budget alerts of accounts: the record whose cost crosses a threshold of
-- ai_accounts.alert_percents on a cents rule of the account writes a row,
-- in its own transaction (so it commits or rolls back with the usage), and
-- sends a notification; once per account, rule, window and threshold.
-- ---------------------------------------------------------------------------

CREATE TABLE @extschema@.ai_account_alerts (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at        timestamptz NOT NULL,
    account_id        text NOT NULL,
    rule_id           integer NOT NULL,
    window_start      timestamptz NOT NULL,
    threshold_percent integer NOT NULL,
    spend_cents       numeric NOT NULL,
    budget_cents      numeric NOT NULL,
    user_id           text NOT NULL,
    acknowledged_at   timestamptz,
    CONSTRAINT ai_account_alerts_once UNIQUE (account_id, rule_id, window_start, threshold_percent)
);
CREATE INDEX ai_account_alerts_open_idx ON @extschema@.ai_account_alerts (id) WHERE acknowledged_at IS NULL;
COMMENT ON TABLE @extschema@.ai_account_alerts IS
    'ai_ratelimit: budget alerts of accounts, one row per account, cents rule, window and threshold crossed, with the user whose call crossed it; set acknowledged_at when handled';
COMMENT ON SEQUENCE @extschema@.ai_account_alerts_id_seq IS
    'ids of ai_account_alerts rows';
REVOKE ALL ON @extschema@.ai_account_alerts FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_account_alerts', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_account_alerts_id_seq', '');
