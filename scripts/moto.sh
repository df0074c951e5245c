#!/usr/bin/env bash
# Starts moto_server (AWS emulator: CloudFront, SNS, SQS) on 127.0.0.1:${MOTO_PORT:-5055} if it is not
# answering, installing it from PyPI first if needed. Tests find it through INVALIDATOR_TEST_MOTO_URL.
set -euo pipefail
PORT="${MOTO_PORT:-5055}"
URL="http://127.0.0.1:$PORT"
up() { curl -fsS -o /dev/null "$URL/moto-api/" 2>/dev/null; }
if up; then echo "moto_server already answering on $URL"; exit 0; fi
if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c 'import flask, flask_cors' 2>/dev/null; then
  echo "installing moto_server from PyPI"
  python3 -m pip install -q 'moto[server]==5.2.1'
fi
LOG="${TMPDIR:-/tmp}/invalidator-moto-$PORT.log"
nohup moto_server -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
for _ in $(seq 1 100); do
  if up; then echo "moto_server started on $URL (log: $LOG)"; exit 0; fi
  sleep 0.1
done
echo "moto_server did not start; see $LOG" >&2
exit 1
