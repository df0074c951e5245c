"""The Python Lambda handler a team would typically write for the same job, for the comparison in
BENCHMARKS.md ("AWS Lambda"): SNS -> SQS batches (raw or SNS-enveloped bodies), one Redis DELETE
per key, a hand-written event type -> keys mapping (the same keys as rules/bench.yaml), partial
batch response. It is not part of invalidator; bench driver: lambda/benches/cold_warm.rs.

Run by a Lambda runtime loop: python3 bootstrap.py handler.handler (or python3 -m awslambdaric
handler.handler on AWS). Needs: pip install redis==8.1.0
"""

import json
import os
import time

_started = time.perf_counter()

import redis  # noqa: E402  (timed as part of init)

PREFIX = os.environ.get("KEY_PREFIX", "")
r = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
r.ping()

KEYS = {
    "price.updated": lambda d: [f"price:{d['product_id']}", f"product:{d['product_id']}"],
    "inventory.changed": lambda d: [f"inventory:{d['sku']}"],
    "review.updated": lambda d: [f"review:{d['product_id']}"],
    "product.updated": lambda d: [f"product:{d['product_id']}"],
}


def handler(event, context):
    failures = []
    for record in event["Records"]:
        try:
            body = json.loads(record["body"])
            if body.get("Type") == "Notification":
                body = json.loads(body["Message"])
            keys = KEYS.get(body.get("type"), lambda d: [])(body.get("data", {}))
            for key in keys:
                r.delete(PREFIX + key)
        except Exception as e:  # a poison message: retried, then the queue's redrive policy
            print(json.dumps({"level": "WARN", "message": "failed", "messageId": record["messageId"], "error": str(e)}))
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


print(json.dumps({
    "level": "INFO",
    "message": "init done",
    "init_ms": (time.perf_counter() - _started) * 1000,
    "ready_unix_ns": time.time_ns(),
}), flush=True)
