#!/usr/bin/env bash
# Starts or stops a private redis-server on a free loopback port, for tests
# (the coordination backend, issue 16).
#
#   scripts/redis.sh start DIR   # prints redis://127.0.0.1:PORT; pid and log go to DIR
#   scripts/redis.sh stop DIR
#
# Nothing is persisted (--save '' --appendonly no). redis-server (Debian's
# package) is installed with apt-get when missing; if that is impossible the
# script exits 3 outside CI (the Redis tests then skip, saying so) and 1 under
# CI=true (a missing tool fails, never skips).
set -euo pipefail

cmd=${1:?usage: redis.sh start|stop DIR}
dir=${2:?usage: redis.sh start|stop DIR}
mkdir -p "$dir"

ensure_redis_server() {
  command -v redis-server >/dev/null 2>&1 && return 0
  local sudo=""
  if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; fi
  if command -v apt-get >/dev/null 2>&1; then
    echo "redis.sh: installing redis-server (apt-get)" >&2
    { $sudo apt-get install -y -qq redis-server >"$dir/apt.log" 2>&1 \
      || { $sudo apt-get update -qq >>"$dir/apt.log" 2>&1 \
           && $sudo apt-get install -y -qq redis-server >>"$dir/apt.log" 2>&1; }; } || true
  fi
  command -v redis-server >/dev/null 2>&1 && return 0
  if [[ "${CI:-}" == "true" ]]; then
    echo "error: redis-server is missing and could not be installed (apt-get install -y redis-server); see $dir/apt.log" >&2
    exit 1
  fi
  echo "warning: redis-server is missing (apt-get install -y redis-server); the Redis tests will skip" >&2
  exit 3
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

case "$cmd" in
  start)
    ensure_redis_server
    port=$(free_port)
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$dir" \
      >"$dir/redis.log" 2>&1 &
    echo $! >"$dir/redis.pid"
    for _ in $(seq 1 100); do
      if [[ "$( (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'PING\r\n' >&3 && timeout 1 head -c 5 <&3) 2>/dev/null)" == "+PONG" ]]; then
        echo "redis://127.0.0.1:$port"
        exit 0
      fi
      if ! kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; then
        echo "error: redis-server exited; see $dir/redis.log" >&2
        tail -n 20 "$dir/redis.log" >&2 || true
        exit 1
      fi
      sleep 0.1
    done
    echo "error: redis-server did not answer on port $port within 10 s; see $dir/redis.log" >&2
    exit 1
    ;;
  stop)
    if [[ -f "$dir/redis.pid" ]]; then
      pid=$(cat "$dir/redis.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/redis.pid"
    fi
    ;;
  *)
    echo "usage: redis.sh start|stop DIR" >&2
    exit 2
    ;;
esac
