#!/usr/bin/env python3
"""grpcio (gRPC's C-core client for Python) through levee, with the health service's
generated stubs from grpcio-health-checking. Run by tests/grpcio.rs:

    python3 tests/grpcio_check.py serve 127.0.0.1:PORT
        a unary Check answers SERVING, a Watch stream yields its first message
    python3 tests/grpcio_check.py shed 127.0.0.1:PORT
        (levee with max_inflight = 1, queue_depth = 0) a Watch holds the one slot, and
        a Check then fails with UNAVAILABLE whose details say "overloaded"

Prints one "ok: ..." line and exits 0, or prints what went wrong and exits 1.
Every call has a deadline, so the script cannot hang.
"""

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEADLINE = 10  # seconds, for every call and for the connection
SERVING = health_pb2.HealthCheckResponse.SERVING
WHOLE_SERVER = health_pb2.HealthCheckRequest(service="")


def channel(target):
    # Loopback only: never through an HTTP proxy from the environment.
    ch = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    grpc.channel_ready_future(ch).result(timeout=DEADLINE)
    return ch


def serve(target):
    with channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        answer, call = stub.Check.with_call(WHOLE_SERVER, timeout=DEADLINE)
        if answer.status != SERVING:
            raise AssertionError(f"Check answered {answer.status}, not SERVING")
        request_id = dict(call.initial_metadata()).get("x-request-id")
        if not request_id:
            raise AssertionError("no x-request-id from levee")
        watch = stub.Watch(WHOLE_SERVER, timeout=DEADLINE)
        first = next(watch)
        watch.cancel()
        if first.status != SERVING:
            raise AssertionError(f"Watch's first message is {first.status}, not SERVING")
    return "Check SERVING, Watch's first message SERVING"


def shed(target):
    with channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        watch = stub.Watch(WHOLE_SERVER, timeout=DEADLINE)
        # Its first message came back: the stream is open and holds levee's one slot.
        first = next(watch)
        if first.status != SERVING:
            raise AssertionError(f"Watch's first message is {first.status}, not SERVING")
        try:
            answer = stub.Check(WHOLE_SERVER, timeout=DEADLINE)
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            trailers = dict(e.trailing_metadata() or ())
        else:
            raise AssertionError(f"Check was not shed: answered {answer.status}")
        finally:
            watch.cancel()
        if code != grpc.StatusCode.UNAVAILABLE:
            raise AssertionError(f"shed Check failed with {code}, not UNAVAILABLE: {details!r}")
        if "overloaded" not in details:
            raise AssertionError(f"details do not carry levee's reason: {details!r}")
        pushback = trailers.get("grpc-retry-pushback-ms")
    return f"Check UNAVAILABLE: {details!r}, grpc-retry-pushback-ms {pushback}"


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("serve", "shed"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, target = sys.argv[1], sys.argv[2]
    try:
        what = serve(target) if mode == "serve" else shed(target)
    except (AssertionError, grpc.RpcError, grpc.FutureTimeoutError, StopIteration) as e:
        print(f"failed ({mode}): {type(e).__name__}: {e}")
        return 1
    print(f"ok: {what} (grpcio {grpc.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
