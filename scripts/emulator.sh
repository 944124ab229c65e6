#!/usr/bin/env bash
# Starts or stops a Pub/Sub emulator on a free loopback port.
#
#   scripts/emulator.sh start DIR   # prints host:port; pid and log go to DIR
#   scripts/emulator.sh stop DIR
#
# The emulator is started directly with java (the gcloud wrapper leaves java
# running when killed), and is ready when GET / answers "Ok".
set -euo pipefail

cmd=${1:?usage: emulator.sh start|stop DIR}
dir=${2:?usage: emulator.sh start|stop DIR}
mkdir -p "$dir"

find_jar() {
  local jar=""
  if command -v dpkg >/dev/null 2>&1; then
    jar=$(dpkg -L google-cloud-cli-pubsub-emulator 2>/dev/null | grep 'emulator.*all\.jar$' | head -n1 || true)
  fi
  if [[ -z "$jar" ]]; then
    jar=$(ls /usr/lib/google-cloud-sdk/platform/pubsub-emulator/lib/*all.jar 2>/dev/null | head -n1 || true)
  fi
  if [[ -z "$jar" ]]; then
    echo "error: the Pub/Sub emulator jar is missing; install it with: apt-get install google-cloud-cli-pubsub-emulator (Java 17 needed)" >&2
    exit 1
  fi
  echo "$jar"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

case "$cmd" in
  start)
    jar=$(find_jar)
    port=$(free_port)
    # shellcheck disable=SC2086 # EMULATOR_JAVA_OPTS is a list of options
    java ${EMULATOR_JAVA_OPTS:--Xmx512m} -jar "$jar" --host=127.0.0.1 --port="$port" >"$dir/emulator.log" 2>&1 &
    echo $! >"$dir/emulator.pid"
    for _ in $(seq 1 150); do
      if curl -sf "http://127.0.0.1:$port/" >/dev/null 2>&1; then
        echo "127.0.0.1:$port"
        exit 0
      fi
      if ! kill -0 "$(cat "$dir/emulator.pid")" 2>/dev/null; then
        echo "error: the emulator exited; see $dir/emulator.log" >&2
        tail -n 20 "$dir/emulator.log" >&2 || true
        exit 1
      fi
      sleep 0.2
    done
    echo "error: the emulator did not answer on port $port within 30 s; see $dir/emulator.log" >&2
    exit 1
    ;;
  stop)
    if [[ -f "$dir/emulator.pid" ]]; then
      pid=$(cat "$dir/emulator.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/emulator.pid"
    fi
    ;;
  *)
    echo "usage: emulator.sh start|stop DIR" >&2
    exit 2
    ;;
esac
