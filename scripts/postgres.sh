#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for the tests (Debian packages; installed if missing) and print the
# URL to export:  export EDGEKIT_TEST_POSTGRES_URL=$(bash scripts/postgres.sh)
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
dir=${EDGEKIT_PG_DIR:-/tmp/edgekit-pg}
port=${EDGEKIT_PG_PORT:-55432}
run() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ ! -f "$dir/PG_VERSION" ]; then
  mkdir -p "$dir"; [ "$(id -u)" = 0 ] && chown postgres "$dir"
  run "$bin/initdb" -D "$dir" -U edgekit --auth=trust >/dev/null
fi
if ! run "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
  run "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -o "-p $port -k /tmp -c listen_addresses=127.0.0.1" start >&2
fi
run "$bin/psql" -h 127.0.0.1 -p "$port" -U edgekit -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='edgekit_test'" \
  | grep -q 1 || run "$bin/createdb" -h 127.0.0.1 -p "$port" -U edgekit edgekit_test
echo "postgresql://edgekit@127.0.0.1:$port/edgekit_test"
