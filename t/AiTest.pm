# Helpers the TAP tests of ai_ratelimit share.
package AiTest;
use strict;
use warnings;
use Exporter 'import';
use Test::More;

our @EXPORT = qw(sql saved);

# one query in the postgres database, its output
sub sql
{
	my ($node, $q) = @_;
	return $node->safe_psql('postgres', $q);
}

# Wait until the saver has saved everything done so far: a save that
# started after $t took every change made before it, and one change after
# $t (a check of a marker user under $plan) makes sure there is such a save
# (one that started just before $t may have taken them all and left
# nothing to save).
sub saved
{
	my ($node, $plan) = @_;
	my $t = sql($node, 'SELECT clock_timestamp()');
	sql($node, "SELECT allowed FROM ai_check_limit('zz-save-marker', '$plan')");
	ok($node->poll_query_until('postgres', "SELECT last_save > '$t' FROM ai_ratelimit_saves()"),
		$node->name . ': saved');
}

1;
