#!/usr/bin/env bash
# Runs a command with PUSH_DISPATCH_TEST_REDIS_URL set: one private
# redis-server (scripts/redis.sh) for the whole test run when the variable is
# unset; tests share it with a key prefix each. Stopped afterwards.
#   scripts/with-redis.sh COMMAND [ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."

state=$(mktemp -d "${TMPDIR:-/tmp}/push-dispatch-redis.XXXXXX")
started=""
cleanup() {
  if [[ -n "$started" ]]; then scripts/redis.sh stop "$state"; fi
  rm -rf "$state"
}
trap cleanup EXIT

if [[ -z "${PUSH_DISPATCH_TEST_REDIS_URL:-}" ]]; then
  rc=0
  url=$(scripts/redis.sh start "$state") || rc=$?
  if [[ $rc -eq 0 ]]; then
    export PUSH_DISPATCH_TEST_REDIS_URL="$url"
    started=1
    echo "Redis on $url"
  elif [[ $rc -ne 3 ]]; then
    exit "$rc"
  fi
fi
"$@"
