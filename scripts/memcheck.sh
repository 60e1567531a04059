#!/usr/bin/env bash
# The regression and isolation suites, and the configuration-edit mix of
# t/023 (test/config_load), under valgrind memcheck, with
# ai_ratelimit built with UndefinedBehaviorSanitizer (bounds, overflow,
# alignment), as root on Debian 12.  Every server process runs under
# valgrind; a memcheck error whose stack passes through ai_ratelimit.so, or
# any UBSan report, fails the run.  The normal build is reinstalled at the
# end.  Takes a few minutes.
source "$(dirname "$0")/common.sh"

UBSAN="-fsanitize=undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -O1 -g"
# AI_VALGRIND: each WAL record of ours is checked for undefined bytes when it
# is logged (the check reports at our own frame)
UBSAN="$UBSAN -DAI_VALGRIND"

install_deps valgrind
log "building with $UBSAN"
build_install PG_CFLAGS_EXTRA="$UBSAN" SHLIB_LINK_EXTRA="-fsanitize=undefined"
postgres_workdir
PGDATA=$WORK/data
PORT=${MEMCHECK_PORT:-54349}
LOGS=$WORK/memcheck
cleanup() {
	as_postgres "$PG_BIN/pg_ctl -D '$PGDATA' -m fast -t 300 stop" >/dev/null 2>&1 || true
	rm -rf "$WORK"
	build_install >/dev/null
}
trap cleanup EXIT
mkdir -p "$LOGS" && chown postgres "$LOGS"

as_postgres "$PG_BIN/initdb -D '$PGDATA' -A trust >/dev/null"
cat "$WORK/test/ai_ratelimit.conf" >> "$PGDATA/postgresql.conf"
cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = ''
port = $PORT
unix_socket_directories = '$WORK'
max_connections = 20
CONF

# A flush writes whole WAL pages, every backend's records on them; the
# server's own records carry padding bytes that were never set (PostgreSQL's
# src/tools/valgrind.supp suppresses the same write).  Ours are checked
# when they are logged instead (AI_VALGRIND above).
cat > "$LOGS/wal.supp" <<'SUPP'
{
   ai_ratelimit_wal_page_write
   Memcheck:Param
   pwrite64(buf)
   ...
   fun:XLogFlush
}
SUPP
chown postgres "$LOGS/wal.supp"

log "starting the server under valgrind"
as_postgres "cd '$WORK' && UBSAN_OPTIONS='print_stacktrace=1:log_path=$LOGS/ubsan' \
	valgrind --tool=memcheck --trace-children=yes --error-limit=no --leak-check=no \
	--suppressions='$LOGS/wal.supp' \
	--num-callers=30 --log-file='$LOGS/vg.%p' \
	$PG_BIN/postgres -D '$PGDATA' > '$WORK/server.log' 2>&1 &"
for i in $(seq 1 240); do
	as_postgres "$PG_BIN/pg_isready -q -h '$WORK' -p $PORT" && break
	sleep 1
done

log "regression and isolation suites against it"
status=0
REGRESS=$(sed -n 's/^REGRESS = //p' "$WORK/Makefile")
ISOLATION=$(sed -n 's/^ISOLATION = //p' "$WORK/Makefile")
PGXS_DIR=$(dirname "$($PG_BIN/pg_config --pgxs)")/../..
as_postgres "cd '$WORK' && $PGXS_DIR/src/test/regress/pg_regress --bindir=$PG_BIN \
	--host='$WORK' --port=$PORT --dbname=contrib_regression $REGRESS" || status=$?
as_postgres "cd '$WORK' && $PGXS_DIR/src/test/isolation/pg_isolation_regress --bindir=$PG_BIN \
	--host='$WORK' --port=$PORT --inputdir=. --outputdir=output_iso --dbname=isolation_regression $ISOLATION" || status=$?
# the configuration-edit mix of t/023: rules, accounts, memberships, plans
# and prices edited while clients check, call and record for account members
log "the configuration-edit mix (t/023) against it"
as_postgres "$PG_BIN/createdb -h '$WORK' -p $PORT config_mix" &&
	as_postgres "$PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -h '$WORK' -p $PORT -d config_mix \
		-f '$WORK/test/config_load/setup.sql'" &&
	as_postgres "$PG_BIN/pgbench -n -c 4 -j 2 -T ${MEMCHECK_MIX_SECONDS:-60} -h '$WORK' -p $PORT \
		-f '$WORK/test/config_load/script.sql' config_mix" || status=$?
as_postgres "$PG_BIN/pg_ctl -D '$PGDATA' -m fast -t 300 stop" >/dev/null || true

# memcheck errors whose stack passes through the extension
bad=0
for f in "$LOGS"/vg.*; do
	# a frame of ours shows the library (no debug info) or an ai_ function
	awk -v ours='ai_ratelimit[.]so|: ai_[a-z0-9_]+ [(]' \
	    '/^==[0-9]+== [A-Z]/ { if (block ~ ours) print block; block = $0; next }
	     /^==[0-9]+== / { block = block "\n" $0 }
	     END { if (block ~ ours) print block }' "$f" | grep -v "^$" > "$f.ours" || true
	if grep -q -E "Invalid|uninitialised|Mismatched|overlap|Conditional jump" "$f.ours"; then
		log "memcheck errors in the extension ($f)"; cat "$f.ours"; bad=1
	fi
done
if ls "$LOGS"/ubsan* >/dev/null 2>&1; then
	log "UndefinedBehaviorSanitizer reports"; cat "$LOGS"/ubsan*; bad=1
fi
processes=$(ls "$LOGS"/vg.* | grep -v ours | wc -l)
[ $status -eq 0 ] || { cat "$WORK"/regression.diffs "$WORK"/output_iso/regression.diffs 2>/dev/null; log "suites failed"; exit $status; }
[ $bad -eq 0 ] || { log "memcheck or UBSan found problems"; exit 1; }
log "no memcheck error in ai_ratelimit.so and no UBSan report, in $processes server processes"
