#!/usr/bin/env bash
# The newcomer's demo: fill the local Redis with the cache entries the sample events make stale,
# replay samples/events.jsonl through the shipped rules, and show what was invalidated.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
grep -v '^#' samples/cache-seed.redis | redis-cli -n 0 >/dev/null
before=$(grep -v '^#' samples/cache-seed.redis | awk '$1=="SET"{print $2}' | xargs redis-cli -n 0 exists)
echo "seeded $before cached keys into redis://127.0.0.1:6379/0"
echo "\$ invalidator replay samples/events.jsonl"
cargo run --quiet -- replay samples/events.jsonl
after=$(grep -v '^#' samples/cache-seed.redis | awk '$1=="SET"{print $2}' | xargs redis-cli -n 0 exists)
echo "cached keys still present: $after of $before (product:9999 is untouched by the samples; reco:* keys only had their TTL shortened)"
redis-cli -n 0 ttl reco:product:1001 | xargs echo "TTL of reco:product:1001 now (was 86400):"
