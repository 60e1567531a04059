# The node-postgres client test (test/client): the article's route against a
# server with ai_ratelimit, run with node's test runner.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Cwd qw(abs_path);

my $dir = abs_path('test/client');
# missing node fails the run: a suite that skips it would pass untested
BAIL_OUT('node is not installed: install nodejs and npm (scripts/test.sh does)')
  unless `node --version 2>/dev/null` =~ /^v\d+/;
BAIL_OUT("test/client/node_modules is missing: run npm ci in test/client (scripts/test.sh does)")
  unless -d "$dir/node_modules/pg";

my $node = PostgreSQL::Test::Cluster->new('client');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'ai_ratelimit'");
$node->start;

local $ENV{PGHOST} = $node->host;
local $ENV{PGPORT} = $node->port;
local $ENV{PGDATABASE} = 'postgres';
local $ENV{PGUSER} = scalar getpwuid($<);

my ($stdout, $stderr);
my $ok = IPC::Run::run([ 'node', '--test', '--test-reporter=spec', "$dir/route.test.js" ],
	'>', \$stdout, '2>', \$stderr);
note($stdout);
note($stderr) if $stderr;
ok($ok, 'node --test test/client/route.test.js passes');
like($stdout, qr/pass 8/, 'all 8 client tests passed');
like($stdout, qr/fail 0/, 'none failed');

is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared state is consistent after the client test');
$node->stop;
done_testing();
