#!/usr/bin/env bash
# A throwaway 3-primary Redis Cluster (no replicas) on loopback, for tests/cluster.rs.
#
#   scripts/redis-cluster.sh start   # idempotent: does nothing if the cluster is already up and ok
#   scripts/redis-cluster.sh stop    # shuts the nodes down and removes their work directory
#
# Ports: 7001 7002 7003, or REDIS_CLUSTER_PORTS="7101 7102 7103" (spaces or commas).
# Work directory: ${TMPDIR:-/tmp}/invalidator-cluster. Needs redis-server and redis-cli 7 on PATH.
set -euo pipefail

PORTS_RAW="${REDIS_CLUSTER_PORTS:-7001 7002 7003}"
read -r -a PORTS <<<"${PORTS_RAW//,/ }"
DIR="${TMPDIR:-/tmp}/invalidator-cluster"
HOST=127.0.0.1
WAIT_SECONDS="${REDIS_CLUSTER_WAIT:-30}"

log() { echo "redis-cluster: $*"; }
die() {
  echo "redis-cluster: error: $*" >&2
  exit 1
}

cli() {
  local port=$1
  shift
  redis-cli -h "$HOST" -p "$port" "$@"
}

answers_ping() { [ "$(cli "$1" ping 2>/dev/null || true)" = "PONG" ]; }

state_ok() { cli "$1" cluster info 2>/dev/null | tr -d '\r' | grep -q '^cluster_state:ok$'; }

all_ok() {
  local p
  for p in "${PORTS[@]}"; do
    answers_ping "$p" && state_ok "$p" || return 1
  done
}

start() {
  command -v redis-server >/dev/null || die "redis-server not found on PATH"
  command -v redis-cli >/dev/null || die "redis-cli not found on PATH"
  [ "${#PORTS[@]}" -ge 3 ] || die "a cluster needs at least 3 primaries, got ports: ${PORTS[*]}"

  if all_ok; then
    log "cluster already up and ok on ports ${PORTS[*]}: nothing to do"
    return 0
  fi

  local p
  local version
  version="$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')"
  if [ -n "$version" ] && [ "$version" -lt 7 ]; then
    log "warning: redis-server major version $version, Redis 7 expected"
  fi

  # Nodes that answer but are not part of an ok cluster (a half-made previous attempt) are
  # restarted from scratch.
  for p in "${PORTS[@]}"; do
    if answers_ping "$p"; then
      if [ -d "$DIR/$p" ]; then
        log "node on port $p answers but the cluster is not ok: shutting it down to start afresh"
        cli "$p" shutdown nosave >/dev/null 2>&1 || true
        for _ in $(seq 1 50); do
          answers_ping "$p" || break
          sleep 0.1
        done
        answers_ping "$p" && die "node on port $p did not shut down"
      else
        die "port $p is taken by a Redis this script did not start (no $DIR/$p): stop it or set REDIS_CLUSTER_PORTS"
      fi
    fi
  done

  mkdir -p "$DIR"
  for p in "${PORTS[@]}"; do
    rm -rf "${DIR:?}/$p"
    mkdir -p "$DIR/$p"
    log "starting redis-server on $HOST:$p (dir $DIR/$p)"
    redis-server \
      --port "$p" \
      --bind "$HOST" \
      --dir "$DIR/$p" \
      --cluster-enabled yes \
      --cluster-config-file "$DIR/$p/nodes.conf" \
      --cluster-node-timeout 5000 \
      --save "" \
      --appendonly no \
      --daemonize yes \
      --pidfile "$DIR/$p/redis.pid" \
      --logfile "$DIR/$p/redis.log"
  done

  for p in "${PORTS[@]}"; do
    local up=0
    for _ in $(seq 1 100); do
      if answers_ping "$p"; then
        up=1
        break
      fi
      sleep 0.1
    done
    [ "$up" = 1 ] || die "redis-server on port $p did not answer PING (see $DIR/$p/redis.log)"
  done

  local addrs=()
  for p in "${PORTS[@]}"; do addrs+=("$HOST:$p"); done
  log "creating the cluster: ${addrs[*]} (no replicas)"
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes

  log "waiting up to ${WAIT_SECONDS}s for cluster_state:ok on every node"
  local deadline=$((SECONDS + WAIT_SECONDS))
  until all_ok; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      for p in "${PORTS[@]}"; do
        echo "--- node $p:" >&2
        cli "$p" cluster info 2>&1 | head -5 >&2 || true
      done
      die "cluster not ok after ${WAIT_SECONDS}s (logs in $DIR/*/redis.log)"
    fi
    sleep 0.5
  done
  log "cluster ok on ports ${PORTS[*]}"
}

stop() {
  local p
  for p in "${PORTS[@]}"; do
    if answers_ping "$p"; then
      log "shutting down node on $HOST:$p"
      cli "$p" shutdown nosave >/dev/null 2>&1 || true
    else
      log "no node answering on $HOST:$p"
    fi
  done
  for p in "${PORTS[@]}"; do
    for _ in $(seq 1 50); do
      answers_ping "$p" || break
      sleep 0.1
    done
  done
  for p in "${PORTS[@]}"; do
    if [ -d "$DIR/$p" ]; then
      log "removing $DIR/$p"
      rm -rf "${DIR:?}/$p"
    fi
  done
  # The work directory goes when no other node (other REDIS_CLUSTER_PORTS) still uses it.
  if [ -d "$DIR" ] && rmdir "$DIR" 2>/dev/null; then
    log "removed $DIR"
  fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
*)
  echo "usage: $0 start|stop" >&2
  exit 2
  ;;
esac
