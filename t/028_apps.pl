# The client helpers as a new user meets them: installed the way the README
# says (a wheel built in a plain virtualenv with no package index; the npm
# pack tarball), in a FastAPI app (AsyncLimiter over a psycopg
# AsyncConnectionPool) and an express app (pg.Pool, with a parseInt int8
# parser), each loaded by test/apps/load.py directly and through PgBouncer in
# transaction mode: plain and streaming calls, streams abandoned by their
# clients, the apps' idle connections terminated under load, a member that
# names its other team; an organisation, two teams and a plan's users with
# caps.  Then a server whose counters are all in use: the apps answer 503
# with Retry-After.  And the glue the apps needed is counted: the README
# states it, at most 10 lines each.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Cwd qw(abs_path);
use FindBin;
use lib $FindBin::Bin;
use AiTest;
use IPC::Run;
use Time::HiRes qw(sleep);

my $apps = abs_path('test/apps');
my $load = "$apps/load.py";
BAIL_OUT('node is not installed: install nodejs and npm (scripts/test.sh does)')
  unless `node --version 2>/dev/null` =~ /^v\d+/;
BAIL_OUT('test/apps/node_modules is missing: run npm ci in test/apps (scripts/test.sh does)')
  unless -d "$apps/node_modules/express";
for my $mod (qw(psycopg psycopg_pool fastapi uvicorn ensurepip))
{
	BAIL_OUT("python3 lacks $mod: install python3-psycopg python3-psycopg-pool python3-fastapi"
		  . ' python3-uvicorn python3-venv (scripts/test.sh does)')
	  unless system('python3', '-c', "import $mod") == 0;
}

my $tmp = PostgreSQL::Test::Utils::tempdir;
local $ENV{npm_config_cache} = "$tmp/npm-cache";
local $ENV{PIP_NO_INDEX} = '1';    # no package index: everything comes from here
local $ENV{PIP_DISABLE_PIP_VERSION_CHECK} = '1';

sub run_ok
{
	my ($cmd, $name) = @_;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run($cmd, '>', \$out, '2>', \$err);
	ok($ok, $name) or diag("$out\n$err");
	return $out;
}

# --- install, as the README says ---
run_ok([ 'python3', '-m', 'venv', "$tmp/plain" ], 'a plain virtualenv');
run_ok([ "$tmp/plain/bin/pip", 'wheel', '--no-deps', '-w', "$tmp/dist", abs_path('clients/python') ],
	'the Python helper builds as a wheel in a plain virtualenv, with no package index');
my @wheels = glob("$tmp/dist/ai_ratelimit_client-*-py3-none-any.whl");
is(scalar(@wheels), 1, 'one pure-Python wheel');
# the app's own virtualenv sees Debian's psycopg, FastAPI and uvicorn
run_ok([ 'python3', '-m', 'venv', '--system-site-packages', "$tmp/app" ], "the app's virtualenv");
run_ok([ "$tmp/app/bin/pip", 'install', abs_path('clients/python') ],
	'pip install ./clients/python in it');
my $where = run_ok([ "$tmp/app/bin/python", '-c',
	'import ai_ratelimit_client as a; print(a.__file__)' ], 'the app imports the installed helper');
like($where, qr/^\Q$tmp\E\/app\//, 'from the virtualenv, not the tree');

mkdir "$tmp/pack";
my $packed = run_ok([ 'sh', '-c', "cd '$tmp/pack' && npm pack '" . abs_path('clients/node') . "' --loglevel=error" ],
	'npm pack makes the Node helper a tarball');
chomp $packed;
ok(-f "$tmp/pack/$packed", "the tarball: $packed");
system('cp', '-a', $apps, "$tmp/apps") == 0 or die "cp: $?";
run_ok([ 'sh', '-c', "cd '$tmp/apps' && npm install --no-save --no-audit --no-fund"
	  . " --loglevel=error '$tmp/pack/$packed'" ], 'npm installs the tarball next to express and pg');
ok(-f "$tmp/apps/node_modules/ai-ratelimit/index.js" && !-l "$tmp/apps/node_modules/ai-ratelimit",
	'installed as files, not a link into the tree');

# --- the server, the apps ---
my $node = PostgreSQL::Test::Cluster->new('apps');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.timezone = 'UTC'
max_connections = 60
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION ai_ratelimit');
my $user = scalar getpwuid($<);
my ($host, $pgport) = ($node->host, $node->port);
local $ENV{AI_LOAD_DSN} = "host=$host port=$pgport dbname=postgres user=$user";

# PgBouncer, transaction mode, 6 server connections for two pools of 8
my $bouncer_port = start_pgbouncer($node, $tmp, 6);

my %dsn = (
	direct => { py => "host=$host port=$pgport dbname=postgres user=$user",
		js => "postgresql://$user\@/postgres?host=$host&port=$pgport" },
	pgbouncer => { py => "host=$tmp port=$bouncer_port dbname=postgres user=$user",
		js => "postgresql://$user\@/postgres?host=$tmp&port=$bouncer_port" },
);

# start an app; returns its harness and base URL once it answers
sub start_app
{
	my ($kind, $dsn, $log) = @_;
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	local $ENV{AI_APP_DSN} = $dsn;
	local $ENV{PORT} = $port;
	my @cmd = $kind eq 'py'
	  ? ("$tmp/app/bin/python", '-m', 'uvicorn', '--app-dir', "$tmp/apps", '--host', '127.0.0.1',
		'--port', $port, 'fastapi_app:app')
	  : ('node', "$tmp/apps/express_app.js");
	my $h = IPC::Run::start([ 'timeout', '-s', 'KILL', '600', @cmd ], '>', $log, '2>&1');
	my $up = 0;
	for (1 .. 100)
	{
		$up = system("python3 -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:$port/model-calls')\""
			  . ' >/dev/null 2>&1') == 0;
		last if $up;
		sleep(0.2);
	}
	ok($up, "the $kind app answers") or diag(slurp_file($log));
	return ($h, "http://127.0.0.1:$port");
}

sub stop_app
{
	my ($h) = @_;
	$h->signal('TERM');
	eval { $h->finish; };
}

# run load.py against an app; its TAP lines become notes, its verdicts tests here
sub load_app
{
	my ($label, $url, $prefix) = @_;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run([ 'python3', $load, $url, $prefix, '12' ], '>', \$out, '2>', \$err);
	note($out);
	note($err) if $err;
	ok($ok, "$label: load.py passes");
	my @failed = $out =~ /^not ok \d+ - (.*)$/mg;
	is_deeply(\@failed, [], "$label: no check failed");
	like($out, qr/^1\.\.11$/m, "$label: all 11 checks ran");
}

for my $route ('direct', 'pgbouncer')
{
	for my $kind ('py', 'js')
	{
		my $label = ($kind eq 'py' ? 'FastAPI' : 'express') . " $route";
		my ($h, $url) = start_app($kind, $dsn{$route}{$kind}, "$tmp/$kind-$route.log");
		load_app($label, $url, "$kind-$route");
		stop_app($h);
	}
}
my $servers = $node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()});
ok($servers <= 6, "PgBouncer kept to its 6 server connections ($servers now)");
stop_pgbouncer($tmp);

# --- no room to count: 503 with Retry-After, from both apps ---
$node->append_conf('postgresql.conf', 'ai_ratelimit.max_keys = 100');
$node->restart;
for my $kind ('py', 'js')
{
	my ($h, $url) = start_app($kind, $dsn{direct}{$kind}, "$tmp/$kind-full.log");
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'python3', '-c', <<"PY" ], '>', \$out, '2>', \$err);
import http.client, json
from urllib.parse import urlparse
u = urlparse("$url")
seen = {}
for i in range(160):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    c.request("POST", "/generate", json.dumps({"prompt": "x"}),
              {"content-type": "application/json", "x-user-id": "full-$kind-%d" % i})
    r = c.getresponse()
    body = r.read()
    key = r.status
    if r.status == 503:
        b = json.loads(body)
        key = (503, b["limited_by"], b["retryable"], r.getheader("Retry-After"))
    seen[str(key)] = seen.get(str(key), 0) + 1
print(json.dumps(seen))
PY
	note("$kind: $out $err");
	like($out, qr/"\(503, 'capacity', True, '5'\)": \d+/,
		"$kind app: a server with no room to count answers 503, retryable, with Retry-After");
	unlike($out, qr/"500"/, "$kind app: never 500");
	stop_app($h);
}

# --- the glue, counted ---
sub glue_lines
{
	my ($file, $mark) = @_;
	return scalar grep { /\S.*\Q$mark\E(?::|\s*$)/ && !/^\s*(#|\/\/|\*)/ } split /\n/, slurp_file($file);
}
my $py_glue = glue_lines("$apps/fastapi_app.py", '# glue');
my $js_glue = glue_lines("$apps/express_app.js", '// glue');
ok($py_glue >= 1 && $py_glue <= 10, "the FastAPI app needs $py_glue lines of glue (at most 10)");
ok($js_glue >= 1 && $js_glue <= 10, "the express app needs $js_glue lines of glue (at most 10)");
my $readme = slurp_file('README.md');
like($readme, qr/FastAPI app \(`test\/apps\/fastapi_app\.py`\) needs $py_glue lines/,
	'the README states the FastAPI count');
like($readme, qr/express app \(`test\/apps\/express_app\.js`\) needs $js_glue lines/,
	'the README states the express count');

is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared state is consistent');
$node->stop;
done_testing();
