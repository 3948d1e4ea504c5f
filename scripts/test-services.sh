#!/usr/bin/env bash
# Start a throw-away PostgreSQL cluster and Redis for the test suite on spare ports and
# print the environment that points at them. `stop DIR` tears them down.
# initdb and postgres refuse to run as root, so as root they run as the postgres user.
set -euo pipefail

spare_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ "${1:-}" = stop ]; then
    dir=$2
    [ -f "$dir/redis.pid" ] && kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
    if [ -d "$dir/pg" ]; then
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
        as_pg "$bin/pg_ctl" -D "$dir/pg" -m immediate stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    exit 0
fi

dir=$(mktemp -d /tmp/muster-test-XXXXXX)
chmod 755 "$dir"
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "PostgreSQL server binaries not found under /usr/lib/postgresql (run make setup)" >&2
    exit 1
fi
if ! command -v redis-server >/dev/null; then
    echo "redis-server not found (run make setup)" >&2
    exit 1
fi
mkdir -p "$dir/pg"
if [ "$(id -u)" = 0 ]; then chown postgres "$dir/pg"; fi
pg_port=$(spare_port)
as_pg "$bin/initdb" -D "$dir/pg" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2; exit 1; }
as_pg "$bin/pg_ctl" -D "$dir/pg" -l "$dir/pg/server.log" -w -t 60 start -o \
    "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
     -c full_page_writes=off -c max_connections=300 -c shared_buffers=128MB" >/dev/null || {
    cat "$dir/pg/server.log" >&2; exit 1; }
redis_port=$(spare_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" >/dev/null
for _ in $(seq 50); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis-cli -p "$redis_port" ping >/dev/null || { echo "redis did not start" >&2; exit 1; }
echo "MUSTER_TEST_SERVICES_DIR=$dir"
echo "DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/muster"
echo "REDIS_URL=redis://127.0.0.1:$redis_port/0"
