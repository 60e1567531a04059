# The README's snippets run as written: every ```sql, ```python and ```js
# block, in the README's order, against a server with the extension
# preloaded.  The quick start's set-up block (it creates the extension and
# the roles) runs first; the quick start's SQL call runs as the role it
# creates for the application, and so do the Python and Node snippets, which
# import the client helpers from clients/ and a stand-in for the vendor's SDK
# (test/readme/): no test may call a vendor.  A block preceded by
# "<!-- not run: why -->" is left out, and the comment says where it is
# tested instead.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Cwd qw(abs_path);
use File::Path qw(make_path);

BAIL_OUT('python3 with psycopg 3 is missing: install python3-psycopg (scripts/test.sh does)')
  unless system('python3', '-c', 'import psycopg') == 0;
BAIL_OUT('node is not installed: install nodejs and npm (scripts/test.sh does)')
  unless `node --version 2>/dev/null` =~ /^v\d+/;
my $pg_module = abs_path('test/client/node_modules/pg');
BAIL_OUT('test/client/node_modules is missing: run npm ci in test/client (scripts/test.sh does)')
  unless $pg_module && -d $pg_module;

# the blocks: language, code, the line it starts on, why it is not run
my @blocks;
my ($lang, $code, $indent, $start, $why, $prev) = (undef, '', 0, 0, undef, '');
my $n = 0;
for my $line (split /\n/, slurp_file('README.md'))
{
	$n++;
	if (!defined $lang && $line =~ /^(\s*)```(sql|python|js|ts|json|sh)?\s*$/ && defined $2)
	{
		($lang, $indent, $start, $code) = ($2, length($1), $n, '');
		($why) = $prev =~ /<!-- not run: (.*?) -->/;
		next;
	}
	if (defined $lang && $line =~ /^\s*```\s*$/)
	{
		push @blocks, { lang => $lang, code => $code, line => $start, why => $why };
		$lang = undef;
		next;
	}
	if (defined $lang)
	{
		$code .= substr($line, $indent <= length($line) ? $indent : length($line)) . "\n";
		next;
	}
	$prev = $line if $line =~ /\S/;
}
my @runnable = grep { $_->{lang} =~ /^(sql|python|js)$/ } @blocks;
ok(@runnable >= 10, scalar(@runnable) . ' SQL, Python and Node blocks found in the README');

my $node = PostgreSQL::Test::Cluster->new('readme');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'ai_ratelimit'\n");
$node->start;

my $dir = PostgreSQL::Test::Utils::tempdir;
# node_modules for the Node snippets: pg, the helper, the SDK stand-in
make_path("$dir/node_modules/\@anthropic-ai/sdk");
symlink($pg_module, "$dir/node_modules/pg") or die "symlink: $!";
symlink(abs_path('clients/node'), "$dir/node_modules/ai-ratelimit") or die "symlink: $!";
open my $fh, '>', "$dir/node_modules/\@anthropic-ai/sdk/package.json" or die;
print $fh '{"name": "@anthropic-ai/sdk", "type": "module", "exports": "./index.mjs"}';
close $fh;
open $fh, '>', "$dir/node_modules/\@anthropic-ai/sdk/index.mjs" or die;
print $fh slurp_file(abs_path('test/readme/anthropic-sdk.mjs'));
close $fh;

local $ENV{PGHOST} = $node->host;
local $ENV{PGPORT} = $node->port;
local $ENV{PGDATABASE} = 'postgres';
local $ENV{PYTHONPATH} = join(':', abs_path('clients/python'), abs_path('test/readme'));
my $superuser = scalar getpwuid($<);

sub run_block
{
	my ($b, $i) = @_;
	my $file = "$dir/block$i." . ({ sql => 'sql', python => 'py', js => 'mjs' }->{ $b->{lang} });
	open my $out, '>', $file or die;
	print $out $b->{code};
	close $out;
	# the application's role, where the README says the code is the application's
	my $app = $b->{lang} ne 'sql' || $b->{code} =~ /\\gset/;
	local $ENV{PGUSER} = $app ? 'app' : $superuser;
	my @cmd = $b->{lang} eq 'sql' ? ('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-f', $file)
	  : $b->{lang} eq 'python' ? ('python3', $file) : ('node', $file);
	my ($stdout, $stderr) = ('', '');
	my $ok = IPC::Run::run(\@cmd, '>', \$stdout, '2>', \$stderr);
	note("README line $b->{line} ($b->{lang}, as " . ($app ? 'app' : 'superuser') . "):\n$stdout$stderr");
	ok($ok, "README line $b->{line}: the $b->{lang} block runs as written");
	unlike($stderr, qr/ERROR|Traceback|Error:/, "README line $b->{line}: and reports no error");
	return $stdout;
}

# the quick start's set-up first: it creates the extension and the roles
my ($setup) = grep { !$_->{why} && $_->{lang} eq 'sql' && $_->{code} =~ /^CREATE EXTENSION/ } @runnable;
ok($setup, 'the quick start has a set-up block');
run_block($setup, 0);
my $i = 0;
for my $b (@runnable)
{
	$i++;
	next if $b == $setup;
	if ($b->{why})
	{
		note("README line $b->{line}: not run ($b->{why})");
		next;
	}
	my $out = run_block($b, $i);
	like($out, qr/echo: (hi|hello)/, "README line $b->{line}: the model was called through the helper")
	  if $b->{lang} ne 'sql';
}

# what the snippets did, seen from the tables
is($node->safe_psql('postgres', "SELECT count(*) > 0 FROM ai_usage WHERE user_id = 'user-42'"), 't',
	'the snippets recorded usage for user-42');
is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared state is consistent');
$node->stop;
done_testing();
