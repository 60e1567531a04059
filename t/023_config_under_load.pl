# Configuration edited under load: 6 clients check (with a model's priced
# estimate), wait, and record in a separate transaction, for 40 members of
# 4 teams of one organisation (a cents rule on each team and on the
# organisation, 200 rules of the plan by model), and call ai_limit_state and
# ai_explain_limits, while the same clients now and then edit ai_rules,
# ai_accounts, ai_account_members, ai_plans and ai_model_prices.  A call
# reads one snapshot of the caches: an edit committed while it runs is read
# by the next call, and no backend may crash (a crash restarts every
# connection of the server).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use lib 't';
use AiTest;

my $node = PostgreSQL::Test::Cluster->new('config_load');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'ai_ratelimit'");
$node->append_conf('postgresql.conf', "max_connections = 30");
$node->start;

my $started = sql($node, 'SELECT pg_postmaster_start_time()');

sql($node, slurp_file('test/config_load/setup.sql'));

# Each transaction is one step of one client: mostly a check, a wait and
# a record (separate transactions, as an application calls a model), the
# rest an edit of the configuration or a read of the limits.
$node->pgbench('-n -c 6 -j 3 -T 20', 0, [qr/actually processed: \d+/], [qr/^$/],
	'6 clients check, call and record while the configuration changes',
	{
		'config_load' => slurp_file('test/config_load/script.sql')
	});

ok(!$node->log_contains(qr/terminated by signal|server process .* was terminated/),
	'no backend crashed');
is(sql($node, 'SELECT pg_postmaster_start_time()'), $started,
	'the server never restarted its connections');
cmp_ok(sql($node, 'SELECT count(*) FROM ai_usage'), '>', 100, 'the clients recorded calls');
is(sql($node, 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared counters are consistent');

done_testing();
