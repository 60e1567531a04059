--
-- shared_state: after every test above, with no transaction open, the
-- shared counters hold no leaked reservation, broken link or record left in
-- flight
--
SELECT * FROM ai_ratelimit_verify();
SELECT open_reservations >= 0 AS counted, open_reservations <= max_reservations AS within
FROM ai_ratelimit_capacity();
-- the verifier does see a record in flight (this transaction's own)
BEGIN;
SELECT ai_record_usage('verify-1', 'gpt-4o', 1, 1);
SELECT * FROM ai_ratelimit_verify();
ROLLBACK;
SELECT * FROM ai_ratelimit_verify();
