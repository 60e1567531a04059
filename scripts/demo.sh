#!/usr/bin/env bash
# The main job of ai_ratelimit, shown on a throwaway local server, as root on
# Debian 12: installs the packages, builds and installs the extension, starts
# PostgreSQL with it preloaded, plays the article's flow and prints what
# happens.  Leaves nothing running.
source "$(dirname "$0")/common.sh"

install_deps
build_install
postgres_workdir
PGDATA=$WORK/data
PORT=${AI_DEMO_PORT:-54329}
cleanup() {
	as_postgres "$PG_BIN/pg_ctl -D '$PGDATA' -m fast stop" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

log "starting a throwaway PostgreSQL $PG_MAJOR with shared_preload_libraries = 'ai_ratelimit'"
as_postgres "$PG_BIN/initdb -D '$PGDATA' -A trust >/dev/null"
cat >> "$PGDATA/postgresql.conf" <<CONF
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.timezone = 'UTC'
listen_addresses = ''
port = $PORT
unix_socket_directories = '$WORK'
CONF
as_postgres "$PG_BIN/pg_ctl -D '$PGDATA' -l '$WORK/server.log' -w start >/dev/null"

log "the article's flow"
as_postgres "$PG_BIN/psql -X -h '$WORK' -p $PORT -d postgres -f '$WORK/demo/article.sql'"
log "done; the server is stopped and its files removed"
