"""A handler that does nothing: the floor of the Lambda benchmark (runtime API emulator, HTTP
invoke, runtime loop), measured the same way as handler.py and invalidator-lambda."""

import json
import time

print(json.dumps({"message": "init done", "ready_unix_ns": time.time_ns()}), flush=True)


def handler(event, context):
    return {"batchItemFailures": []}
