#!/usr/bin/env bash
# A local cluster in one command: N bark-stream replicas on free loopback ports behind HAProxy on PORT.
#
#   deploy/local-cluster.sh PORT N [server args...]
#   deploy/local-cluster.sh 8080 2 --model random-tiny --codec random --tokenizer tests/data/tokenizer --offline
#   python -m client --url ws://127.0.0.1:8080/v1/stream --max-semantic-tokens 50 "Hello there."
#
# Prints one line per replica, `replica I pid PID port PORT` (PID is the `python -m server` process itself:
# SIGTERM drains it), then `haproxy pid PID port PORT` once the balancer listens. Runs in the foreground
# until SIGTERM or SIGINT: then every replica drains (through the still-running HAProxy), and HAProxy stops.
# A replica that exits meanwhile is reported (`replica I exited status S`); the others keep serving.
#
# Every replica gets `--host 127.0.0.1 --port 0 --refuse-when-full --trusted-proxy 127.0.0.1` before the
# server args (do not pass --host or --port: each replica picks its own free port). HAProxy's configuration
# is deploy/haproxy/haproxy.cfg with its `server` lines replaced by the replicas; each replica's maxconn is
# its --max-streams (default 8). Only the WebSocket port is balanced (an --http-port would need one port per
# replica and a second frontend).
# Environment:
#   PYTHON                      the interpreter (default: python)
#   BARK_CLUSTER_DIR            where replica logs and haproxy.cfg go (default: a new temporary directory)
#   BARK_CLUSTER_CERT           a PEM (certificate + key): HAProxy terminates TLS (wss://, https://) on PORT
#   BARK_CLUSTER_HOST           the address HAProxy binds (default 127.0.0.1)
#   BARK_CLUSTER_START_TIMEOUT  seconds a replica may take to load and warm up (default 600)
#   BARK_HAPROXY_LOG            HAProxy's log level on stderr (default notice; info logs every connection)
set -uo pipefail

usage() { echo "usage: $0 PORT N [server args...]" >&2; exit 2; }
[ $# -ge 2 ] || usage
PORT=$1 N=$2
shift 2
[[ $PORT =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || { echo "PORT: expected 1-65535, got $PORT" >&2; usage; }
[[ $N =~ ^[0-9]+$ ]] && [ "$N" -ge 1 ] || { echo "N: expected a positive number of replicas, got $N" >&2; usage; }
command -v haproxy >/dev/null || { echo "haproxy not found: apt-get install haproxy (Debian/Ubuntu)" >&2; exit 2; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEMPLATE=$HERE/haproxy/haproxy.cfg
PYTHON=${PYTHON:-python}
DIR=${BARK_CLUSTER_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/bark-cluster.XXXXXX")}
mkdir -p "$DIR"
START_TIMEOUT=${BARK_CLUSTER_START_TIMEOUT:-600}

# maxconn per replica = its engine slots (the last --max-streams wins, as in argparse)
MAXCONN=8
prev=""
for arg in "$@"; do
  case $arg in --max-streams=*) MAXCONN=${arg#*=} ;; esac
  [ "$prev" = "--max-streams" ] && MAXCONN=$arg
  prev=$arg
done

PIDS=() PORTS=() EXITED=()
HAPROXY_PID=""

stop_all() {  # drain the replicas through the running balancer, then stop it
  trap '' TERM INT
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [ -n "$HAPROXY_PID" ]; then
    kill -TERM "$HAPROXY_PID" 2>/dev/null  # the replicas are gone: nothing is left to finish
    wait "$HAPROXY_PID" 2>/dev/null
  fi
}
trap 'stop_all; exit 0' TERM INT
haproxy_exited() {  # HAProxy is gone: report its status (with HINT), stop the replicas, exit CODE (default: its status)
  local hint=${1:-} code=${2:-} rc
  wait "$HAPROXY_PID"
  rc=$?
  echo "haproxy exited with status $rc$hint" >&2
  HAPROXY_PID=""
  stop_all
  exit "${code:-$rc}"
}

# --- replicas -------------------------------------------------------------------------------------------
for ((i = 1; i <= N; i++)); do
  "$PYTHON" -m server --host 127.0.0.1 --port 0 --refuse-when-full --trusted-proxy 127.0.0.1 "$@" \
    >"$DIR/replica-$i.log" 2>&1 &
  PIDS+=($!)
  EXITED+=(0)
done
echo "logs $DIR" >&2

SCHEMES=()
for ((i = 1; i <= N; i++)); do
  pid=${PIDS[i-1]} port="" waited=0
  while [ -z "$port" ]; do
    line=$(grep -m1 -oE 'listening on wss?://[^ ]*:[0-9]+/' "$DIR/replica-$i.log" 2>/dev/null)
    if [ -n "$line" ]; then
      port=$(echo "$line" | sed -E 's|.*:([0-9]+)/$|\1|')
      SCHEMES+=("$(echo "$line" | sed -E 's|listening on (wss?)://.*|\1|')")
      break
    fi
    if ! kill -0 "$pid" 2>/dev/null || [ "$waited" -ge $((START_TIMEOUT * 10)) ]; then
      echo "replica $i did not start (log $DIR/replica-$i.log):" >&2
      tail -n 20 "$DIR/replica-$i.log" >&2
      stop_all
      exit 1
    fi
    sleep 0.1 & wait $!
    waited=$((waited + 1))
  done
  PORTS+=("$port")
  echo "replica $i pid $pid port $port"
done

# --- HAProxy ----------------------------------------------------------------------------------------------
CFG=$DIR/haproxy.cfg
{
  grep -vE '^[[:space:]]*server[[:space:]]' "$TEMPLATE"
  for ((i = 1; i <= N; i++)); do
    tls=""
    [ "${SCHEMES[i-1]}" = "wss" ] && tls=" ssl verify none"  # replicas started with --ssl-certfile
    echo "    server replica$i 127.0.0.1:${PORTS[i-1]}$tls"
  done
} >"$CFG"
export BARK_BIND="${BARK_CLUSTER_HOST:-127.0.0.1}:$PORT" BARK_MAXCONN="$MAXCONN"
if [ -n "${BARK_CLUSTER_CERT:-}" ]; then export BARK_TLS="ssl crt $BARK_CLUSTER_CERT"; else unset BARK_TLS; fi
if ! haproxy -c -q -f "$CFG" >"$DIR/haproxy-check.log" 2>&1; then
  echo "haproxy rejected $CFG:" >&2
  cat "$DIR/haproxy-check.log" >&2
  stop_all
  exit 1
fi
haproxy -db -f "$CFG" &
HAPROXY_PID=$!
for ((t = 0; t < 100; t++)); do  # until the frontend accepts connections (at most 10 s)
  (exec 3<>"/dev/tcp/${BARK_CLUSTER_HOST:-127.0.0.1}/$PORT") 2>/dev/null && break
  kill -0 "$HAPROXY_PID" 2>/dev/null || break
  sleep 0.1 & wait $!
done
kill -0 "$HAPROXY_PID" 2>/dev/null || haproxy_exited " (port $PORT in use?)" 1
echo "haproxy pid $HAPROXY_PID port $PORT"

# --- foreground: report replicas that exit, stop when HAProxy does ---------------------------------------
while :; do
  sleep 0.5 & wait $!
  for ((i = 1; i <= N; i++)); do
    pid=${PIDS[i-1]}
    if [ "${EXITED[i-1]}" = 0 ] && ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid"
      echo "replica $i exited status $?"
      EXITED[i-1]=1
    fi
  done
  kill -0 "$HAPROXY_PID" 2>/dev/null || haproxy_exited ""
done
