# A second real client, psycopg 3 (test/psycopg/route_test.py): the article's
# route from 16 threads with estimates and exact spend, exact counts under
# contention and rollback give-back, first on direct connections, then
# through a real PgBouncer in transaction mode with fewer server connections
# than client threads (prepare_threshold=None, as the README says).  The
# client helpers (clients/python with psycopg, clients/node with pg) are
# tested the same two ways (test/psycopg/helper_test.py,
# test/client/helper.test.js).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Cwd qw(abs_path);
use FindBin;
use lib $FindBin::Bin;
use AiTest;

my $script = abs_path('test/psycopg/route_test.py');
my $helper_py = abs_path('test/psycopg/helper_test.py');
my $helper_js = abs_path('test/client/helper.test.js');
my $clients_py = abs_path('clients/python');
BAIL_OUT('node is not installed: install nodejs and npm (scripts/test.sh does)')
  unless `node --version 2>/dev/null` =~ /^v\d+/;
BAIL_OUT('python3 with psycopg 3 is missing: install python3-psycopg (scripts/test.sh does)')
  unless system('python3', '-c', 'import psycopg') == 0;

my $node = PostgreSQL::Test::Cluster->new('psycopg');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.timezone = 'UTC'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION ai_ratelimit');
my $user = scalar getpwuid($<);

# run the client; its TAP lines become notes, its verdicts tests here
sub run_client
{
	my ($label, %env) = @_;
	local @ENV{ keys %env } = values %env;
	local $ENV{PGDATABASE} = 'postgres';
	local $ENV{PGUSER} = $user;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run([ 'python3', $script ], '>', \$out, '2>', \$err);
	note($out);
	note($err) if $err;
	ok($ok, "$label: route_test.py passes");
	my @failed = $out =~ /^not ok \d+ - (.*)$/mg;
	is_deeply(\@failed, [], "$label: no client test failed");
	like($out, qr/^1\.\.9$/m, "$label: all 9 client tests ran");

	# the Python helper, from the repository's clients/python
	local $ENV{PYTHONPATH} = $clients_py;
	($out, $err) = ('', '');
	$ok = IPC::Run::run([ 'python3', $helper_py ], '>', \$out, '2>', \$err);
	note($out);
	note($err) if $err;
	ok($ok, "$label: helper_test.py (clients/python) passes");
	@failed = $out =~ /^not ok \d+ - (.*)$/mg;
	is_deeply(\@failed, [], "$label: no Python helper test failed");
	like($out, qr/^1\.\.21$/m, "$label: all 21 Python helper tests ran");

	# the node helper, from the repository's clients/node
	($out, $err) = ('', '');
	$ok = IPC::Run::run([ 'node', '--test', '--test-reporter=spec', $helper_js ],
		'>', \$out, '2>', \$err);
	note($out);
	note($err) if $err;
	ok($ok, "$label: helper.test.js (clients/node) passes");
	like($out, qr/pass 10/, "$label: all 10 node helper tests passed");
}

run_client('direct', PGHOST => $node->host, PGPORT => $node->port);

# PgBouncer, transaction mode, 4 server connections for 16 client threads
my $dir = PostgreSQL::Test::Utils::tempdir;
my $port = start_pgbouncer($node, $dir, 4);

run_client('through PgBouncer', PGHOST => $dir, PGPORT => $port, AI_VIA_PGBOUNCER => '1');
my $servers = $node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()});
ok($servers >= 1 && $servers <= 4, "PgBouncer multiplexed 16 threads over $servers server connections (at most 4)");

stop_pgbouncer($dir);
is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared state is consistent after both runs');
$node->stop;
done_testing();
