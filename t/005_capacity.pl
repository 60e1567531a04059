# A full shared hash never forgets a live counter: dead entries are reclaimed
# first; when every entry is live, ai_ratelimit.on_full refuses (default) or
# allows with a WARNING, and each such event is counted.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('capacity');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.max_keys = 100
ai_ratelimit.timezone = 'Etc/GMT+12'
});
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans VALUES ('tiny', 100, '1 second', 1000, NULL);
});

# fill every counter with a live user
is(sql(q{SELECT count(*) FILTER (WHERE c.allowed) FROM generate_series(1, 100) g,
	LATERAL ai_check_limit('u' || g, 'tiny') c}), '100', '100 users fill the 100 counters');
is(sql("SELECT max_keys, tracked_keys, reclaimed, full_events FROM ai_ratelimit_capacity()"),
	'100|100|0|0', 'capacity: full, nothing reclaimed yet');

# one more user: refused with a clear message, nothing forgotten
my ($ret, $out, $err) = $node->psql('postgres', "SELECT * FROM ai_check_limit('u101', 'tiny')",
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
isnt($ret, 0, 'a new user is refused when every counter is live');
like($err, qr/ERROR:  53000: ai_ratelimit cannot track another user: all 100 counters are in use/,
	'refused with SQLSTATE 53000 (insufficient resources, not a limit reached) and a clear message');
like($err, qr/HINT:  Raise ai_ratelimit.max_keys/, 'the hint says what to do');
is(sql(q{SELECT count(*) FROM generate_series(1, 100) g,
	LATERAL ai_peek_limit('u' || g, 'tiny') p WHERE p.remaining = 998}),
	'100', 'every live user still holds its count');
is(sql("SELECT full_events FROM ai_ratelimit_capacity()"), '1', 'the refusal is counted');

# a counter that holds nothing live is reclaimed first
sql("SELECT ai_reset_limits('u1')");
is(sql("SELECT allowed FROM ai_check_limit('u101', 'tiny')"), 't',
	'after a reset frees a counter, the new user fits');
is(sql("SELECT reclaimed FROM ai_ratelimit_capacity()"), '1', 'one counter reclaimed');

# on_full = allow: the request goes ahead, uncounted, with a WARNING
sql("ALTER SYSTEM SET ai_ratelimit.on_full = 'allow'");
sql("SELECT pg_reload_conf()");
$node->poll_query_until('postgres', "SELECT current_setting('ai_ratelimit.on_full') = 'allow'");
($ret, $out, $err) = $node->psql('postgres', "SELECT allowed, remaining FROM ai_check_limit('u102', 'tiny')");
is($out, 't|', 'on_full = allow: the request is allowed, remaining unknown (NULL)');
like($err, qr/WARNING:  ai_ratelimit allowed a request without counting it: all 100 counters are in use/,
	'with a WARNING');
is(sql("SELECT remaining FROM ai_peek_limit('u102', 'tiny')"), '999', 'and nothing was counted');
is(sql("SELECT full_events FROM ai_ratelimit_capacity()"), '2', 'that event is counted too');

# on_full = allow still refuses an untracked user by a block and by the
# monthly budget, read from the tables; only burst and daily go uncounted
sql(q{INSERT INTO ai_plans VALUES ('capped', 100, '1 second', 1000, 100)});
is(sql("SELECT ai_record_usage('u103', 'gpt-4o', 0, 500000)"), '500',
	'500 cents recorded for an untracked user');
is(sql("SELECT count(*) FROM ai_usage WHERE user_id = 'u103'"), '1', 'the usage row is there');
($ret, $out, $err) = $node->psql('postgres',
	"SELECT allowed, limited_by, error FROM ai_check_limit('u103', 'capped')");
is($out, 'f|monthly_budget|Monthly AI budget exceeded',
	'on_full = allow: an untracked user over the monthly budget is refused');
unlike($err, qr/without counting/, 'a refusal carries no "allowed without counting" warning');
is(sql(q{SELECT count(*) FILTER (WHERE allowed) FROM generate_series(1, 50) g,
	LATERAL ai_check_limit(CASE WHEN g > 0 THEN 'u103' END, 'capped')}), '0', 'every one of 50 tries is refused');
sql(q{INSERT INTO ai_user_limits (user_id, blocked_until) VALUES ('u104', 'infinity')});
($ret, $out, $err) = $node->psql('postgres', "SELECT allowed, limited_by FROM ai_check_limit('u104', 'tiny')");
is($out, 'f|blocked', 'on_full = allow: a blocked untracked user is refused');
($ret, $out, $err) = $node->psql('postgres', "SELECT allowed FROM ai_check_limit('u105', 'capped')");
is($out, 't', 'an untracked user under the budget, holding no estimate, is allowed');
like($err, qr/DETAIL:  Blocks, the monthly budget and the rules of ai_rules were checked against what is recorded, and no estimate is held; burst, daily and token limits were not checked/,
	'the warning says what was checked, and that nothing is held');
($ret, $out, $err) = $node->psql('postgres', "SELECT allowed FROM ai_check_limit('u105', 'capped', 5)",
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
isnt($ret, 0, 'on_full = allow: a check that would hold an estimate for an untracked user is an error');
like($err, qr/ERROR:  53000: ai_ratelimit cannot hold the estimate of another user: all 100 counters are in use/,
	'SQLSTATE 53000, saying why');

# The adversary's move: the table is full, and 8 clients of one untracked
# user check with a 10-cent estimate, call (sleep) and record 10 cents in
# separate transactions, against its 100-cent budget.  No estimate can be
# held, so none is admitted: nothing is spent over the budget.
sql(q{INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok)
	VALUES ('cap-10c', 1000, 0)});
sql(q{CREATE FUNCTION cap_try(u text, est numeric) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    RETURN (SELECT allowed::int FROM ai_check_limit(u, 'capped', est));
EXCEPTION WHEN insufficient_resources THEN
    RETURN 0;
END $$});
$node->pgbench('-n -c 8 -j 2 -t 10', 0, [qr/actually processed: 80/], [qr/^$/],
	'8 clients of an untracked user check, call and record',
	{
		'full_allow' => q{
SELECT cap_try('u106', 10) AS ok \gset
\sleep 5 ms
SELECT ai_record_usage('u106', 'cap-10c', 100, 0) WHERE :ok = 1;
}
	});
cmp_ok(sql("SELECT coalesce(sum(cost_cents), 0) FROM ai_usage WHERE user_id = 'u106'"), '<=', 100,
	'on_full = allow: the untracked user spent no more than its budget');

# expired windows are reclaimed: move the local day forward (UTC-12 -> UTC+14)
# so every daily count is from an earlier day, and let the 1-second bursts pass
sql("ALTER SYSTEM SET ai_ratelimit.timezone = 'Etc/GMT-14'");
sql("ALTER SYSTEM SET ai_ratelimit.on_full = 'refuse'");
sql("SELECT pg_reload_conf()");
$node->poll_query_until('postgres', "SELECT current_setting('ai_ratelimit.timezone') = 'Etc/GMT-14'");
sleep(2);
is(sql(q{SELECT count(*) FILTER (WHERE c.allowed) FROM generate_series(201, 250) g,
	LATERAL ai_check_limit('u' || g, 'tiny') c}), '50', 'expired counters are reclaimed for new users');
# reclaiming is incremental: new users free what they need, partition by
# partition, not the whole table at once
cmp_ok(sql("SELECT reclaimed FROM ai_ratelimit_capacity()"), '>=', 51,
	'the expired counters the new users needed were reclaimed');

is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared state is consistent: no leaked reservation or record in flight');
$node->stop;
done_testing();
