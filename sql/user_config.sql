--
-- user_config: ai_user_plans and ai_user_limits are looked up one user at a
-- time and cached per session; a change made by another session is seen by
-- this session's next check, without reloading either table
--
CREATE EXTENSION IF NOT EXISTS dblink;
-- another session of this database, committing on its own
SELECT format('host=%s port=%s dbname=%s',
              split_part(current_setting('unix_socket_directories'), ',', 1),
              current_setting('port'), current_database()) AS other \gset
SELECT dblink_connect('other', :'other');

-- this session caches a user without a row ...
SELECT allowed, remaining FROM ai_check_limit('uc-1');
-- ... another session gives the user a plan: seen at this session's next check
SELECT dblink_exec('other', $$INSERT INTO ai_user_plans VALUES ('uc-1', 'pro')$$);
SELECT allowed, remaining FROM ai_check_limit('uc-1');
SELECT dblink_exec('other', $$UPDATE ai_user_plans SET plan = 'free' WHERE user_id = 'uc-1'$$);
SELECT allowed, remaining FROM ai_check_limit('uc-1');
SELECT dblink_exec('other', $$DELETE FROM ai_user_plans WHERE user_id = 'uc-1'$$);
SELECT allowed, remaining FROM ai_check_limit('uc-1');

-- a check that names its plan still sees another session's override and block
SELECT allowed, remaining FROM ai_check_limit('uc-2', 'pro');
SELECT dblink_exec('other', $$INSERT INTO ai_user_limits (user_id, daily_limit) VALUES ('uc-2', 2)$$);
SELECT allowed, remaining FROM ai_check_limit('uc-2', 'pro');
SELECT dblink_exec('other', $$UPDATE ai_user_limits SET blocked_until = 'infinity' WHERE user_id = 'uc-2'$$);
SELECT allowed, limited_by FROM ai_check_limit('uc-2', 'pro');
SELECT dblink_exec('other', $$DELETE FROM ai_user_limits WHERE user_id = 'uc-2'$$);
SELECT allowed, remaining FROM ai_check_limit('uc-2', 'pro');

-- an uncommitted change of the other session is not seen; its commit is
SELECT dblink_exec('other', 'BEGIN');
SELECT dblink_exec('other', $$INSERT INTO ai_user_plans VALUES ('uc-3', 'pro')$$);
SELECT allowed, remaining FROM ai_check_limit('uc-3');
SELECT dblink_exec('other', 'COMMIT');
SELECT allowed, remaining FROM ai_check_limit('uc-3');

-- this session sees its own change inside its transaction, and not after a rollback
BEGIN;
UPDATE ai_user_plans SET plan = 'free' WHERE user_id = 'uc-3';
SELECT allowed, remaining FROM ai_check_limit('uc-3');
ROLLBACK;
SELECT allowed, remaining FROM ai_check_limit('uc-3');

-- TRUNCATE and a change of many users at once forget every cached user
SELECT dblink_exec('other', $$TRUNCATE ai_user_plans$$);
SELECT allowed, remaining FROM ai_check_limit('uc-3');
SELECT count(*) FILTER (WHERE allowed) FROM generate_series(1, 2000) g,
    LATERAL ai_check_limit('bulk-' || g);
SELECT dblink_exec('other', $$INSERT INTO ai_user_plans SELECT 'bulk-' || g, 'pro' FROM generate_series(1, 2000) g$$);
SELECT count(*) FILTER (WHERE remaining = 498) AS on_pro FROM generate_series(1, 2000) g,
    LATERAL ai_check_limit('bulk-' || g);

-- the cache is bounded per session by ai_ratelimit.user_cache_size: 20,000
-- users take a few MB at the default, and far less once the bound is lowered
CREATE FUNCTION user_cache_kb() RETURNS bigint LANGUAGE sql AS $$
    SELECT sum(total_bytes) / 1024 FROM pg_backend_memory_contexts
    WHERE 'ai_ratelimit user configuration' IN (name, ident) OR name = 'ai_ratelimit users' $$;
SELECT count(*) FILTER (WHERE allowed) FROM generate_series(1, 20000) g,
    LATERAL ai_check_limit('many-' || g);
SELECT user_cache_kb() > 1024 AS grows_with_users;
SET ai_ratelimit.user_cache_size = 1024;
SELECT count(*) FILTER (WHERE allowed) FROM generate_series(20001, 40000) g,
    LATERAL ai_check_limit('many-' || g);
SELECT user_cache_kb() < 512 AS bounded;
RESET ai_ratelimit.user_cache_size;
-- lowering the bound while the cache holds users with a plan row: the
-- next user's plan is read after the cache gave its memory back, and
-- every user keeps the plan of its row
INSERT INTO ai_user_plans SELECT 'planned-' || g, 'pro' FROM generate_series(1, 3000) g;
SELECT count(*) FILTER (WHERE remaining = 499) AS on_pro FROM generate_series(1, 3000) g,
    LATERAL ai_check_limit('planned-' || g);
SET ai_ratelimit.user_cache_size = 1024;
INSERT INTO ai_user_plans SELECT 'planned-late-' || g, 'enterprise' FROM generate_series(1, 3) g;
SELECT g, allowed, remaining FROM generate_series(1, 3) g,
    LATERAL ai_check_limit('planned-late-' || g);
SELECT count(*) FILTER (WHERE remaining = 498) AS still_on_pro FROM generate_series(1, 3000) g,
    LATERAL ai_check_limit('planned-' || g);
RESET ai_ratelimit.user_cache_size;
DELETE FROM ai_user_plans WHERE user_id LIKE 'planned-%';

SELECT dblink_disconnect('other');
DELETE FROM ai_user_plans WHERE user_id LIKE 'bulk-%';
