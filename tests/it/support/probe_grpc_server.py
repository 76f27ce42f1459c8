"""The gRPC server the `grpc` probe tests talk to: grpcio with the standard health service of
grpcio-health-checking (scripts/setup.sh installs both).

Services: `shop.Cart` is SERVING until the process --watch-pid is gone, then NOT_SERVING for
--down seconds, then SERVING again (the test's fault kills that process, so the flip happens
mid-run, after the baseline); `shop.Down` is always NOT_SERVING. With --cert/--key it serves TLS,
and with --client-ca it also requires a client certificate signed by that CA.

usage: probe_grpc_server.py PORT --watch-pid PID [--down SECONDS] [--cert PEM --key PEM [--client-ca PEM]]
"""

import argparse
import os
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

parser = argparse.ArgumentParser()
parser.add_argument("port", type=int)
parser.add_argument("--watch-pid", type=int, required=True)
parser.add_argument("--down", type=float, default=1.5)
parser.add_argument("--cert")
parser.add_argument("--key")
parser.add_argument("--client-ca")
args = parser.parse_args()

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
servicer = health.HealthServicer()
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
servicer.set("shop.Cart", SERVING)
servicer.set("shop.Down", NOT_SERVING)
address = f"127.0.0.1:{args.port}"
if args.cert:
    with open(args.key, "rb") as k, open(args.cert, "rb") as c:
        pair = (k.read(), c.read())
    if args.client_ca:
        with open(args.client_ca, "rb") as ca:
            credentials = grpc.ssl_server_credentials(
                [pair], root_certificates=ca.read(), require_client_auth=True
            )
    else:
        credentials = grpc.ssl_server_credentials([pair])
    server.add_secure_port(address, credentials)
else:
    server.add_insecure_port(address)
server.start()


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(") ", 1)[1][0]
        return state not in "ZX"
    except (FileNotFoundError, IndexError):
        return False


while alive(args.watch_pid):
    time.sleep(0.02)
servicer.set("shop.Cart", NOT_SERVING)
time.sleep(args.down)
servicer.set("shop.Cart", SERVING)
server.wait_for_termination()
