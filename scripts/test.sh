#!/usr/bin/env bash
# The whole test suite of ai_ratelimit on a fresh Debian 12 machine, as root:
# installs the packages, builds with -Werror, installs, and runs
# `make installcheck` (regression, isolation and TAP tests, each on its own
# temporary server with the extension preloaded; the TAP tests include the
# node-postgres client test) as the postgres user.
source "$(dirname "$0")/common.sh"

install_deps
# node and npm for the node-postgres client test (test/client)
command -v node >/dev/null && command -v npm >/dev/null ||
	apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
build_install
postgres_workdir
trap 'rm -rf "$WORK"' EXIT

log "installing the client test's npm packages (pg)"
as_postgres "cd '$WORK/test/client' && npm ci --no-audit --no-fund --loglevel=error"

log "running the tests as postgres in $WORK"
status=0
as_postgres "cd '$WORK' && make -s PG_CONFIG=$PG_BIN/pg_config installcheck" || status=$?

if [ $status -ne 0 ]; then
	for f in "$WORK"/regression.diffs "$WORK"/output_iso/regression.diffs; do
		[ -f "$f" ] && { log "$f"; cat "$f"; }
	done
	for f in "$WORK"/tmp_check/log/regress_log_*; do
		[ -f "$f" ] && { log "$f (last 60 lines)"; tail -n 60 "$f"; }
	done
	log "tests failed"
	exit $status
fi
log "all tests passed"
