--
-- ratelimit_headers: a check's row carries the IETF RateLimit and
-- RateLimit-Policy field values (1.9) of the limit it left with the least
-- room, or of the limit that refused it; integers only, with no second
-- round trip.  t= and w= depend on the clock and the calendar: they are
-- tested against bounds, and shown as <t> and <w>.
--
CREATE FUNCTION hdr(f text) RETURNS text LANGUAGE sql AS
$$ SELECT regexp_replace(regexp_replace(f, ';t=[0-9]+', ';t=<t>'), ';w=[0-9]+', ';w=<w>') $$;
-- the seconds of t= and w=
CREATE FUNCTION hdr_param(f text, p text) RETURNS integer LANGUAGE sql AS
$$ SELECT (regexp_match(f, ';' || p || '=([0-9]+)'))[1]::integer $$;

INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents)
VALUES ('hdr', 5, 100, 1000), ('hdr-budget', NULL, 1000, 100), ('hdr-none', NULL, NULL, NULL);

-- the burst leaves 4 of 5 (80%), the day 99 of 100, the budget 990 of 1000:
-- the burst is named, in requests (no qu), over its 60-second window
SELECT allowed, ratelimit, ratelimit_policy FROM ai_check_limit('h-1', 'hdr', 10);
-- once one is counted, t= is when it leaves the window: the minute is cut
-- into 3-second buckets, so at most 63 seconds
SELECT allowed, hdr(ratelimit), hdr(ratelimit_policy),
       hdr_param(ratelimit, 't') BETWEEN 1 AND 63 AS t_within_window
FROM ai_check_limit('h-1', 'hdr', 10);
SELECT count(*) FILTER (WHERE allowed) AS allowed_more FROM
  (SELECT (ai_check_limit('h-1', 'hdr', 10)).allowed FROM generate_series(1, 2)) s;
-- the fifth takes the last
SELECT allowed, ratelimit_policy, hdr(ratelimit) FROM ai_check_limit('h-1', 'hdr', 10);
-- the sixth within the minute is refused by the burst: nothing left, and t=
-- is its Retry-After
SELECT allowed, limited_by, hdr(ratelimit), ratelimit_policy,
       hdr_param(ratelimit, 't') = retry_after AS t_is_retry_after
FROM ai_check_limit('h-1', 'hdr', 10);

-- a budget in cents: whole cents, qu="cents", w= the month's length
SELECT allowed, hdr(ratelimit), hdr(ratelimit_policy),
       hdr_param(ratelimit_policy, 'w') BETWEEN 28 * 86400 AND 31 * 86400 AS month_window,
       hdr_param(ratelimit, 't') <= hdr_param(ratelimit_policy, 'w') AS resets_within_month
FROM ai_check_limit('h-2', 'hdr-budget', 30.5);
-- 30.5 held and 60 more asked: 9.5 left, shown as 9
SELECT allowed, hdr(ratelimit) FROM ai_check_limit('h-2', 'hdr-budget', 60);
-- 20 more does not fit: the budget refuses, with what is left
SELECT allowed, limited_by, hdr(ratelimit), hdr(ratelimit_policy)
FROM ai_check_limit('h-2', 'hdr-budget', 20);

-- a rule of ai_rules is named by its rule_id: 3 requests an hour leave 2
-- (67%), less room than the budget's 70 of 100
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value)
VALUES (7901, 'plan', 'hdr-budget', 'requests', 'hour', 3);
SELECT allowed, hdr(ratelimit), ratelimit_policy,
       hdr_param(ratelimit, 't') BETWEEN 1 AND 3600 AS t_within_hour
FROM ai_check_limit('h-3', 'hdr-budget', 30);
-- tokens: qu="tokens"
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value)
VALUES (7902, 'user', 'h-4', 'tokens', 'minute', 1000);
SELECT allowed, hdr(ratelimit), ratelimit_policy
FROM ai_check_limit('h-4', 'hdr-none', estimated_tokens => 900);
SELECT allowed, limited_by, retryable, hdr(ratelimit), ratelimit_policy
FROM ai_check_limit('h-4', 'hdr-none', estimated_tokens => 200);

-- an account's budget that leaves less room than the user's own limits
INSERT INTO ai_accounts (account_id) VALUES ('hdr-team');
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES ('hdr-team', 'h-5', true);
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value)
VALUES (7903, 'account', 'hdr-team', 'cents', 'day', 40);
SELECT allowed, hdr(ratelimit), hdr(ratelimit_policy),
       hdr_param(ratelimit_policy, 'w') BETWEEN 23 * 3600 AND 25 * 3600 AS day_window
FROM ai_check_limit('h-5', 'hdr-budget', 30);
-- refused there: the 30 cents in flight hold what the 20 needs, so a retry
-- may pass once they settle (retryable), and 10 are left
SELECT allowed, limited_by, retryable, hdr(ratelimit), hdr(ratelimit_policy)
FROM ai_check_limit('h-5', 'hdr-budget', 20);

-- no limit applies: no header
SELECT allowed, ratelimit IS NULL AS no_ratelimit, ratelimit_policy IS NULL AS no_policy
FROM ai_check_limit('h-6', 'hdr-none');
-- a peek speaks of the same limit, and counts nothing
SELECT allowed, hdr(ratelimit), hdr(ratelimit_policy) FROM ai_peek_limit('h-1', 'hdr');

DELETE FROM ai_rules WHERE rule_id IN (7901, 7902, 7903);
DROP FUNCTION hdr(text);
DROP FUNCTION hdr_param(text, text);
