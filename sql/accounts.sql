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

-- usage is filed under the account a call is charged to: for now the
-- user's default account (none: NULL)
SELECT ai_record_usage('alice', 'gpt-4o', 1000, 1000) AS alice,
       ai_record_usage('bob', 'gpt-4o', 2000, 0) AS bob,
       ai_record_usage('carol', 'gpt-4o', 1000, 0) AS carol;
SELECT user_id, account_id, cost_cents FROM ai_usage WHERE user_id IN ('alice', 'bob', 'carol') ORDER BY 1;
-- an account spends what it and every account below it spent
SELECT ai_account_spend('acme') AS acme, ai_account_spend('acme-research') AS research,
       ai_account_spend('acme-research-nlp') AS nlp, ai_account_spend('acme-sales') AS sales,
       ai_account_spend('nowhere') AS nowhere;
SELECT ai_account_spend('acme', (date_trunc('month', now()) - interval '1 month')::date) AS acme_last_month;
-- a new default account files the next call under it, at once
UPDATE ai_account_members SET is_default = (account_id = 'acme-sales') WHERE user_id = 'alice';
SELECT ai_record_usage('alice', 'gpt-4o', 1000, 0) AS alice_again;
SELECT account_id, count(*) FROM ai_usage WHERE user_id = 'alice' GROUP BY 1 ORDER BY 1;
-- and leaving every account files none
DELETE FROM ai_account_members WHERE user_id = 'bob';
SELECT ai_record_usage('bob', 'gpt-4o', 1000, 0) AS bob_again;
SELECT account_id, count(*) FROM ai_usage WHERE user_id = 'bob' GROUP BY 1 ORDER BY 1;
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES ('acme-research-nlp', 'bob', true);

-- purged rows keep their account in the archive (a database of its own)
CREATE DATABASE ai_accounts_purge;
\c ai_accounts_purge
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_accounts (account_id, parent_id) VALUES ('org', NULL), ('team', 'org');
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES ('team', 'p-1', true);
SELECT ai_record_usage('p-1', 'gpt-4o', 1000, 1000), ai_record_usage('p-2', 'gpt-4o', 1000, 1000);
SELECT ai_account_spend('org') AS before_purge;
SELECT ai_purge_usage('0 seconds') AS purged;
SELECT user_id, account_id, calls FROM ai_usage_archive ORDER BY 1;
SELECT ai_account_spend('org') AS after_purge, ai_monthly_spend('p-1') AS p1, ai_monthly_spend('p-2') AS p2;
\c contrib_regression
DROP DATABASE ai_accounts_purge;
