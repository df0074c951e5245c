#!/usr/bin/env bash
# Runs every test against real services on this machine: the local Redis (started if it is not
# answering), a 3-node Redis Cluster on loopback ports 7001-7003 (redis-cluster.sh), a Kafka-protocol
# broker on 127.0.0.1:19092 (tansu.sh; skipped when KAFKA_BROKERS names another) and the AWS emulator
# moto_server on 127.0.0.1:5055 (moto.sh); cargo-lambda (its Lambda runtime API emulator runs the
# Lambda tests) is installed from PyPI when missing, and redis-sentinel (the failover tests start
# their own Sentinels) and prometheus with promtool (tests/prometheus_rules.rs checks
# deploy/prometheus/ with promtool, tests/grafana_dashboard.rs queries a Prometheus server) from
# Debian's packages; kubernetes-validate (tests/deploy_kubernetes.rs) from PyPI. The framework
# layout tests drive real framework code through tests/frameworks/ (see its README.md): PHP with
# phpredis and Symfony Cache 5.4 (symfony.php) from Debian's packages (php-cli php-redis
# php-symfony-cache), and Node.js with npm from Debian's packages when missing, plus
# @fortedigital/nextjs-cache-handler and redis (node-redis) pinned in
# tests/frameworks/package-lock.json, installed there with `npm ci` (nextjs.mjs).
set -euo pipefail
cd "$(dirname "$0")/.."

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return; fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server not found: installing it from Debian's packages"
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  fi
  echo "starting Redis on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "Redis did not start" >&2
  exit 1
}

# The failover tests (tests/failover*.rs) start their own Redis Sentinels; Debian ships
# redis-sentinel in a package of its own.
ensure_sentinel() {
  if command -v redis-sentinel >/dev/null 2>&1; then return; fi
  echo "redis-sentinel not found: installing it from Debian's packages"
  apt-get update -qq && apt-get install -y -qq redis-sentinel >/dev/null
}

ensure_cargo_lambda() {
  if cargo lambda --version >/dev/null 2>&1; then return; fi
  echo "cargo-lambda not found: installing it from PyPI"
  python3 -m pip install -q --no-deps 'cargo-lambda==1.9.2'
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  cargo lambda --version
}

# tests/prometheus_rules.rs runs `promtool check rules` and `promtool test rules` on
# deploy/prometheus/, and tests/grafana_dashboard.rs starts a Prometheus server that scrapes a
# worker; Debian ships both binaries in the `prometheus` package.
ensure_promtool() {
  if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then return; fi
  echo "promtool or prometheus not found: installing them from Debian's packages"
  apt-get update -qq && apt-get install -y -qq prometheus >/dev/null
}

# tests/deploy_kubernetes.rs validates deploy/kubernetes/ against the Kubernetes schemas.
ensure_kubernetes_validate() {
  if command -v kubernetes-validate >/dev/null 2>&1; then return; fi
  echo "kubernetes-validate not found: installing it from PyPI"
  python3 -m pip install -q 'kubernetes-validate==1.37.0'
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  kubernetes-validate --version
}

# tests/frameworks/symfony.php writes, reads and invalidates entries through Symfony Cache's own
# RedisTagAwareAdapter / TagAwareAdapter with phpredis; Debian ships Symfony Cache 5.4.
ensure_php() {
  if command -v php >/dev/null 2>&1 \
    && php -r 'exit(class_exists("Redis") ? 0 : 1);' >/dev/null 2>&1 \
    && [ -f /usr/share/php/Symfony/Component/Cache/Adapter/RedisTagAwareAdapter.php ]; then
    return
  fi
  echo "php, phpredis or Symfony Cache not found: installing them from Debian's packages"
  apt-get update -qq && apt-get install -y -qq php-cli php-redis php-symfony-cache >/dev/null
}

# tests/frameworks/nextjs.mjs drives @fortedigital/nextjs-cache-handler (redis-strings) with
# node-redis; both are pinned in tests/frameworks/package-lock.json (`next`, a peer dependency the
# handler never imports, is left out by tests/frameworks/.npmrc).
ensure_node_handler() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "node or npm not found: installing them from Debian's packages"
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  fi
  local dir=tests/frameworks
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    echo "installing the Next.js cache handler in $dir (npm ci)"
    (cd "$dir" && npm ci --no-audit --no-fund)
    touch "$dir/node_modules"
  fi
}

ensure_redis
ensure_sentinel
ensure_cargo_lambda
ensure_promtool
ensure_kubernetes_validate
ensure_php
ensure_node_handler
bash scripts/redis-cluster.sh start
if [ -z "${KAFKA_BROKERS:-}" ]; then bash scripts/tansu.sh; fi
bash scripts/moto.sh
cargo test --workspace "$@"
