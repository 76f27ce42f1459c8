#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: initdb into a temporary directory owned by the
# `postgres` system user, trust authentication on loopback only, 127.0.0.1 on a free port, unix
# sockets inside the directory, no fsync (its data is thrown away).
#
#   eval "$(scripts/postgres.sh start)"   # prints `export FAULTLINE_PG_DIR=… FAULTLINE_TEST_POSTGRES=…`
#   scripts/postgres.sh url  [DIR]        # the superuser URL of the server in DIR ($FAULTLINE_PG_DIR)
#   scripts/postgres.sh stop [DIR]        # stops it and removes DIR
#   scripts/postgres.sh bindir            # where initdb and pg_ctl are; fails when they are not
#
# Run it as root (postgres refuses to run as root, so the server runs as `postgres`) or as the
# `postgres` user itself. Messages go to stderr; only `start` and `url` print to stdout.
set -euo pipefail

die() {
  echo "postgres.sh: $*" >&2
  exit 1
}

bindir() {
  local dir
  if command -v pg_config >/dev/null 2>&1; then
    dir="$(pg_config --bindir)"
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
      return
    fi
  fi
  # Debian's pg_config may come from libpq-dev without the server; take the newest server.
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
      echo "$dir"
      return
    fi
  done
  return 1
}

# Runs a command as the postgres user (or directly when we are that user already).
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

dir_arg() {
  local dir="${1:-${FAULTLINE_PG_DIR:-}}"
  [ -n "$dir" ] || die "no server directory: pass DIR or set FAULTLINE_PG_DIR"
  echo "$dir"
}

url_of() {
  local dir="$1"
  [ -f "$dir/port" ] || die "no server in $dir (no $dir/port)"
  echo "postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
}

start() {
  local bin dir port tries
  bin="$(bindir)" || die "no PostgreSQL server binaries (initdb, pg_ctl): install the postgresql package"
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "no postgres system user: install the postgresql package"
  elif [ "$(id -un)" != postgres ]; then
    die "run as root or as the postgres user (uid $(id -u) can do neither)"
  fi
  # /tmp rather than $TMPDIR: the postgres user must reach the directory, and a private TMPDIR
  # (such as /root/tmp) would hide it.
  dir="$(mktemp -d /tmp/faultline-pg.XXXXXX)"
  # Anything that fails from here on must not leave a directory or a server behind.
  trap 'as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$dir"' ERR
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir"
  fi
  as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C.UTF-8 \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; false; }
  # Loopback only: nothing but 127.0.0.1 is listened on, and only loopback may authenticate.
  printf 'local all all trust\nhost all all 127.0.0.1/32 trust\n' >"$dir/data/pg_hba.conf"
  # Free port: take a random one and try the next if postgres cannot bind it (the server holds
  # the port once it started, so no other test can race for it afterwards).
  for tries in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 40000))
    if as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB -c max_connections=200" \
      start >/dev/null 2>&1; then
      echo "$port" >"$dir/port"
      trap - ERR
      echo "postgres.sh: PostgreSQL ($bin) on 127.0.0.1:$port in $dir" >&2
      printf 'export FAULTLINE_PG_DIR=%q\nexport FAULTLINE_TEST_POSTGRES=%q\n' "$dir" "$(url_of "$dir")"
      return
    fi
    echo "postgres.sh: could not start on port $port (try $tries of 8)" >&2
  done
  cat "$dir/server.log" >&2 || true
  false
}

stop() {
  local bin dir
  dir="$(dir_arg "${1:-}")"
  [ -d "$dir" ] || return 0
  bin="$(bindir)" || die "no PostgreSQL server binaries to stop $dir with"
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  url) url_of "$(dir_arg "${2:-}")" ;;
  stop) stop "${2:-}" ;;
  bindir) bindir ;;
  *) die "usage: postgres.sh start|url [DIR]|stop [DIR]|bindir" ;;
esac
