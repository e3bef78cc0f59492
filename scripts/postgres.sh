#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for the tests (Debian packages; installed if missing) and print its
# URL:  export EDGEKIT_TEST_POSTGRES_URL=$(bash scripts/postgres.sh)
# EDGEKIT_PG_DIR / EDGEKIT_PG_PORT pick the cluster folder and port (default: a new folder, a free port);
# stop it with: pg_ctl -D "$EDGEKIT_PG_DIR" stop (as the postgres user when root).
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
dir=${EDGEKIT_PG_DIR:-$(mktemp -d /tmp/edgekit-pg.XXXXXX)}
port=${EDGEKIT_PG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
run() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$dir"
[ "$(id -u)" = 0 ] && chown postgres "$dir"
if [ ! -f "$dir/PG_VERSION" ]; then
  run "$bin/initdb" -D "$dir" -U edgekit --auth=trust >/dev/null
fi
if ! run "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
  run "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -o "-p $port -k /tmp -c listen_addresses=127.0.0.1" start >&2
fi
port=$(head -n 4 "$dir/postmaster.pid" | tail -n 1)  # the port the running cluster really uses
run "$bin/psql" -h 127.0.0.1 -p "$port" -U edgekit -d postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname='edgekit_test'" | grep -q 1 \
  || run "$bin/createdb" -h 127.0.0.1 -p "$port" -U edgekit edgekit_test
echo "postgresql://edgekit@127.0.0.1:$port/edgekit_test"
