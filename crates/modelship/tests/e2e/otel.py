"""The tracing test's two outside parties, each from PyPI (scripts/setup.sh --test puts them in
.cache/otel-venv):

  otel.py receive --grpc PORT --http PORT --out FILE
      an OTLP trace receiver built on opentelemetry-proto's messages: gRPC (the TraceService,
      with grpcio) and HTTP/protobuf (POST /v1/traces); every span it gets becomes one JSON line
      of FILE: trace and span ids, parent, name, attributes, links.

  otel.py client --url URL --requests N
      a client with opentelemetry-sdk: each request is made inside a span of its own trace and
      carries its context (traceparent, tracestate) the way the SDK's propagator injects it.
      Prints one JSON line per request: the trace id, the client span's id, the status, the
      x-request-id answered.
"""

import argparse
import json
import sys
import threading
import urllib.request
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def hexid(b):
    return b.hex()


def spans_of(request):
    for resource_spans in request.resource_spans:
        service = None
        for attribute in resource_spans.resource.attributes:
            if attribute.key == "service.name":
                service = attribute.value.string_value
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attributes = {}
                for a in span.attributes:
                    v = a.value
                    kind = v.WhichOneof("value")
                    attributes[a.key] = getattr(v, kind) if kind else None
                yield {
                    "service": service,
                    "trace_id": hexid(span.trace_id),
                    "span_id": hexid(span.span_id),
                    "parent_span_id": hexid(span.parent_span_id),
                    "name": span.name,
                    "kind": span.kind,
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                    "attributes": attributes,
                    "links": [{"trace_id": hexid(l.trace_id), "span_id": hexid(l.span_id)} for l in span.links],
                    "trace_state": span.trace_state,
                    "status": span.status.code,
                }


def receive(args):
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    lock = threading.Lock()
    out = open(args.out, "a", buffering=1)

    def write(request, protocol):
        with lock:
            for span in spans_of(request):
                span["protocol"] = protocol
                out.write(json.dumps(span) + "\n")

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            write(request, "grpc")
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    server.add_insecure_port(f"127.0.0.1:{args.grpc}")
    server.start()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                self.send_response(404)
                self.end_headers()
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            write(request, "http")
            answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *a):
            pass

    http = ThreadingHTTPServer(("127.0.0.1", args.http), Handler)
    print("ready", flush=True)
    http.serve_forever()


def client(args):
    from opentelemetry import propagate, trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    tracer = trace.get_tracer("modelship-test-client")
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [0.1] * 30}]}).encode()
    for i in range(args.requests):
        with tracer.start_as_current_span(f"client-request-{i}") as span:
            headers = {"content-type": "application/json"}
            propagate.inject(headers)
            # A vendor's entry, as a caller's tracing system would add it: passed on as it came.
            headers["tracestate"] = "vendor=test" + str(i)
            request = urllib.request.Request(args.url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=30) as response:
                status = response.status
                request_id = response.headers.get("x-request-id")
            context = span.get_span_context()
            print(json.dumps({"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x"), "status": status, "request_id": request_id}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("receive")
    r.add_argument("--grpc", type=int, required=True)
    r.add_argument("--http", type=int, required=True)
    r.add_argument("--out", required=True)
    c = sub.add_parser("client")
    c.add_argument("--url", required=True)
    c.add_argument("--requests", type=int, default=5)
    args = parser.parse_args()
    receive(args) if args.command == "receive" else client(args)


if __name__ == "__main__":
    sys.exit(main())
