--
-- shared_state: after every test above, with no transaction open, the
-- shared counters hold no leaked reservation, broken link or record left in
-- flight
--
SELECT * FROM ai_ratelimit_verify();
-- the pool's count of open reservations (a scan of every slot) is the sum
-- of what the users of this database hold (a walk of each user's list) and
-- what their checks hold on accounts (1.8: a walk of each account's list),
-- and a new reservation adds exactly one to both
SELECT (SELECT open_reservations FROM ai_ratelimit_capacity()) =
       (SELECT coalesce(sum(open_reservations), 0) FROM ai_ratelimit_status) +
       (SELECT coalesce(sum(open_reservations), 0) FROM ai_account_status) AS pool_matches_users;
SELECT open_reservations AS open_before FROM ai_ratelimit_capacity() \gset
SELECT allowed FROM ai_check_limit('verify-2', 'ttl', 1);
SELECT open_reservations - :open_before AS one_more FROM ai_ratelimit_capacity();
SELECT (SELECT open_reservations FROM ai_ratelimit_capacity()) =
       (SELECT coalesce(sum(open_reservations), 0) FROM ai_ratelimit_status) +
       (SELECT coalesce(sum(open_reservations), 0) FROM ai_account_status) AS pool_matches_users;
-- the verifier does see a record in flight (this transaction's own)
BEGIN;
SELECT ai_record_usage('verify-1', 'gpt-4o', 1, 1);
SELECT * FROM ai_ratelimit_verify();
ROLLBACK;
SELECT * FROM ai_ratelimit_verify();
