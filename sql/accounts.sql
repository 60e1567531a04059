--
-- accounts: organisations, teams and members (1.8).  Accounts form a tree
-- (no cycles, at most eight levels); users belong to accounts, with at most
-- one default account each.
--
INSERT INTO ai_accounts (account_id, parent_id, name) VALUES
    ('acme', NULL, 'Acme Inc.'),
    ('acme-research', 'acme', 'Research'),
    ('acme-sales', 'acme', 'Sales'),
    ('acme-research-nlp', 'acme-research', 'NLP');
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES
    ('acme-research', 'alice', true),
    ('acme-sales', 'alice', false),
    ('acme-research-nlp', 'bob', true);
-- a parent that does not exist, an account its own parent, a cycle
INSERT INTO ai_accounts (account_id, parent_id) VALUES ('lost', 'nowhere');
INSERT INTO ai_accounts (account_id, parent_id, created_at) VALUES ('self', 'self', '2026-01-01 00:00+00');
UPDATE ai_accounts SET parent_id = 'acme-research-nlp' WHERE account_id = 'acme';
UPDATE ai_accounts SET parent_id = 'acme-research-nlp' WHERE account_id = 'acme-research';
-- an account's id never changes; a parent with sub-accounts cannot go
UPDATE ai_accounts SET account_id = 'acme-rnd' WHERE account_id = 'acme-research';
DELETE FROM ai_accounts WHERE account_id = 'acme-research';
-- eight levels at most, counting the sub-accounts that move along
INSERT INTO ai_accounts (account_id, parent_id)
SELECT 'deep-' || i, CASE WHEN i > 1 THEN 'deep-' || (i - 1) END FROM generate_series(1, 8) i;
INSERT INTO ai_accounts (account_id, parent_id) VALUES ('deep-9', 'deep-8');
UPDATE ai_accounts SET parent_id = 'deep-7' WHERE account_id = 'acme-research';
UPDATE ai_accounts SET parent_id = 'deep-6' WHERE account_id = 'acme-research';
SELECT account_id, parent_id FROM ai_accounts WHERE account_id LIKE 'acme%' ORDER BY 1;
UPDATE ai_accounts SET parent_id = 'acme' WHERE account_id = 'acme-research';
-- one default account per user; a member of an account that does not exist
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES ('acme', 'alice', true);
INSERT INTO ai_account_members (account_id, user_id) VALUES ('nowhere', 'carol');
INSERT INTO ai_account_members (account_id, user_id, created_at) VALUES ('acme', '', '2026-01-01 00:00+00');
-- a deleted account takes its memberships with it
INSERT INTO ai_accounts (account_id, parent_id) VALUES ('acme-temp', 'acme');
INSERT INTO ai_account_members (account_id, user_id) VALUES ('acme-temp', 'dave');
DELETE FROM ai_accounts WHERE account_id = 'acme-temp';
SELECT account_id, user_id, is_default FROM ai_account_members ORDER BY 1, 2;
-- kept by pg_dump
SELECT c.relname FROM pg_extension e, pg_class c
WHERE e.extname = 'ai_ratelimit' AND c.oid = ANY (e.extconfig) AND c.relname LIKE 'ai_account%'
ORDER BY 1;
DELETE FROM ai_accounts WHERE account_id LIKE 'deep-%' AND account_id <> 'deep-1';
DELETE FROM ai_accounts WHERE account_id = 'deep-1';
-- the tree changes at READ COMMITTED only, where each change sees the last
BEGIN ISOLATION LEVEL REPEATABLE READ;
UPDATE ai_accounts SET parent_id = 'acme' WHERE account_id = 'acme-research-nlp';
ROLLBACK;
BEGIN ISOLATION LEVEL REPEATABLE READ;
UPDATE ai_accounts SET name = 'Natural language' WHERE account_id = 'acme-research-nlp';
COMMIT;
SELECT account_id, parent_id, name FROM ai_accounts ORDER BY 1;
-- the chain a check for an account charges: the account, then those above it
SELECT * FROM ai_account_chain('acme-research-nlp');
SELECT * FROM ai_account_chain('acme');
SELECT count(*) AS none FROM ai_account_chain('nowhere');
-- a change of the tree is seen by the next call, in this session too
UPDATE ai_accounts SET parent_id = 'acme-sales' WHERE account_id = 'acme-research-nlp';
SELECT * FROM ai_account_chain('acme-research-nlp');
UPDATE ai_accounts SET parent_id = 'acme-research' WHERE account_id = 'acme-research-nlp';
SELECT string_agg(account_id, ' < ' ORDER BY level) FROM ai_account_chain('acme-research-nlp');
