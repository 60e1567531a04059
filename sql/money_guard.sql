--
-- money_guard: no path hands back money that requests in flight hold, or
-- lets a cap be passed near the limits of the arithmetic; a peek changes
-- nothing; a DROP EXTENSION undone by ROLLBACK TO forgets nothing
--
INSERT INTO ai_plans (plan, monthly_budget_cents) VALUES ('cap', 100);

-- a reset forgets counts, not the estimates of requests in flight
SELECT allowed, reservation_id IS NOT NULL AS reserved FROM ai_check_limit('mg-reset', 'cap', 90);
SELECT ai_reset_limits('mg-reset');
SELECT allowed, limited_by FROM ai_check_limit('mg-reset', 'cap', 90);
SELECT reserved_cents, open_reservations FROM ai_ratelimit_status WHERE user_id = 'mg-reset';
-- and it does forget the counts: the daily count starts over
INSERT INTO ai_plans (plan, daily_limit) VALUES ('two-a-day', 2);
SELECT allowed FROM checks('mg-reset-2', 'two-a-day', 3);
SELECT ai_reset_limits('mg-reset-2');
SELECT allowed, remaining FROM ai_check_limit('mg-reset-2', 'two-a-day');

-- a peek makes no counter, even with a budget to look up
SELECT tracked_keys AS keys_before FROM ai_ratelimit_capacity() \gset
SELECT allowed, limited_by FROM ai_peek_limit('mg-peek', 'cap');
SELECT count(*) AS peeked_rows FROM ai_ratelimit_status WHERE user_id = 'mg-peek';
SELECT tracked_keys - :keys_before AS new_keys FROM ai_ratelimit_capacity();
-- and it sees what is spent and held all the same
SELECT allowed FROM ai_check_limit('mg-peek-2', 'cap', 60);
SELECT allowed, limited_by FROM ai_peek_limit('mg-peek-2', 'cap');
SELECT ai_record_usage('mg-peek-2', 'gpt-4o', 0, 101000);
SELECT allowed, limited_by FROM ai_peek_limit('mg-peek-2', 'cap');

-- a usage row inserted by hand after a failed ai_record_usage (rolled back
-- to a savepoint) counts in the next check
CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.model = 'boom' THEN RAISE EXCEPTION 'no boom'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_boom BEFORE INSERT ON ai_usage FOR EACH ROW EXECUTE FUNCTION refuse_boom();
SELECT allowed FROM ai_check_limit('mg-hand', 'cap', 1);
BEGIN;
SAVEPOINT s;
SELECT ai_record_usage('mg-hand', 'boom', 1, 1);
ROLLBACK TO s;
INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
                      cached_input_tokens, cost_cents)
VALUES (now(), (now() AT TIME ZONE 'UTC')::date, 'mg-hand', 'gpt-4o', 'gpt-4o', 0, 0, 0, 95);
COMMIT;
DROP TRIGGER refuse_boom ON ai_usage;
SELECT allowed, limited_by FROM ai_check_limit('mg-hand', 'cap', 10);
SELECT ai_monthly_spend('mg-hand');

-- records in flight whose costs add up past what 64 bits hold: the spend
-- stays at the top, never wraps below the budget when they commit
INSERT INTO ai_model_prices VALUES ('mg-gold', 10000, 10000, 10000);
INSERT INTO ai_plans (plan, monthly_budget_cents) VALUES ('mg-huge', 9000000000);
SELECT allowed FROM ai_check_limit('mg-sat', 'mg-huge', 1);
BEGIN;
SELECT ai_record_usage('mg-sat', 'mg-gold', 1000000000, 1000000000, 1000000000) FROM generate_series(1, 4);
SELECT in_flight_cents FROM ai_ratelimit_status WHERE user_id = 'mg-sat';
COMMIT;
SELECT in_flight_cents FROM ai_ratelimit_status WHERE user_id = 'mg-sat';
SELECT allowed, limited_by FROM ai_check_limit('mg-sat', 'mg-huge', 1);
SELECT ai_monthly_spend('mg-sat');

-- the result row's descriptor is kept per function, not rebuilt or leaked
-- when more functions are called than it once had room for
INSERT INTO ai_plans (plan) VALUES ('unlimited');
CREATE FUNCTION five_kinds(n int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        PERFORM ai_check_limit('mg-desc', 'unlimited');
        PERFORM ai_check_limit('mg-desc', 'unlimited', 0, 0);
        PERFORM ai_enforce_limit('mg-desc', 'unlimited');
        PERFORM ai_enforce_limit('mg-desc', 'unlimited', 0, 0);
        PERFORM ai_peek_limit('mg-desc', 'unlimited');
    END LOOP;
END $$;
-- (a transaction's charges are kept in TopMemoryContext until it ends: the
-- first run grows that array to its size, the second measures)
SELECT five_kinds(10000);
SELECT total_bytes AS top_before FROM pg_backend_memory_contexts WHERE name = 'TopMemoryContext' \gset
SELECT five_kinds(10000);
SELECT total_bytes - :top_before < 1048576 AS top_memory_flat
FROM pg_backend_memory_contexts WHERE name = 'TopMemoryContext';

-- DROP EXTENSION rolled back to a savepoint forgets no counter; one that
-- commits (through a released savepoint) forgets them all
CREATE DATABASE ai_drop;
\c ai_drop
CREATE EXTENSION ai_ratelimit;
SELECT allowed FROM ai_check_limit('mg-drop', 'pro');
SELECT allowed FROM ai_check_limit('mg-drop', 'pro');
BEGIN;
SAVEPOINT s;
DROP EXTENSION ai_ratelimit;
ROLLBACK TO s;
COMMIT;
SELECT daily_used FROM ai_ratelimit_status WHERE user_id = 'mg-drop';
SELECT allowed, remaining FROM ai_check_limit('mg-drop', 'pro');
BEGIN;
SAVEPOINT s;
DROP EXTENSION ai_ratelimit;
RELEASE s;
COMMIT;
CREATE EXTENSION ai_ratelimit;
SELECT count(*) AS rows_after_drop FROM ai_ratelimit_status;
SELECT allowed, remaining FROM ai_check_limit('mg-drop', 'pro');
\c contrib_regression
DROP DATABASE ai_drop;
