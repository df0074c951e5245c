"""A minimal Lambda runtime loop for handler.py (the runtime API: GET next, POST response), used by
the benchmark instead of awslambdaric: awslambdaric 4.2.2's C client crashed (segmentation fault in
runtime_client.next()) on the answers of cargo-lambda's runtime API emulator. Like awslambdaric's
client (curl) it keeps one HTTP/1.1 connection with TCP_NODELAY and writes each request in one
piece (http.client writes the headers and the body separately, and the emulator then forwards the
answer in two writes that Nagle's algorithm delays by 40 ms).

    AWS_LAMBDA_RUNTIME_API=127.0.0.1:9000/.rt python3 bootstrap.py handler.handler
"""

import http.client
import importlib
import json
import os
import socket
import sys

api = os.environ["AWS_LAMBDA_RUNTIME_API"]
host, _, path = api.removeprefix("http://").partition("/")
base = ("/" + path if path else "") + "/2018-06-01/runtime/invocation"
module, name = sys.argv[1].rsplit(".", 1)
sys.path.insert(0, os.getcwd())
handler = getattr(importlib.import_module(module), name)

address, port = host.rsplit(":", 1)
sock = socket.create_connection((address, int(port)))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def call(method, target, body=b""):
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
    if body:
        head += "Content-Type: application/json\r\n"
    sock.sendall(head.encode() + b"\r\n" + body)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response, response.read()


while True:
    r, event = call("GET", f"{base}/next")
    request_id = r.getheader("Lambda-Runtime-Aws-Request-Id")
    try:
        body, kind = json.dumps(handler(json.loads(event), None)), "response"
    except Exception as e:
        body, kind = json.dumps({"errorMessage": str(e), "errorType": type(e).__name__}), "error"
    call("POST", f"{base}/{request_id}/{kind}", body.encode())
