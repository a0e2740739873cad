"""Drives a running modelship with Triton's own Python clients (tritonclient, HTTP and gRPC).

Usage: triton_clients.py HTTP_ADDR GRPC_ADDR ADMIN_ADDR TOKEN_FILE ROWS_JSON
Prints one JSON object: what each client call returned (probabilities per path, datatypes
round-tripped, error codes, repository states). The Rust test (triton.rs) compares it with the
server's V2 JSON answers; this script asserts nothing itself, so a failure shows the full picture.
"""
import json
import sys

import grpc
import numpy as np
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

http_addr, grpc_addr, admin_addr, token_file, rows_file = sys.argv[1:6]
token = open(token_file).read().strip()
auth = {"authorization": f"Bearer {token}"}
rows = np.asarray(json.load(open(rows_file)), dtype=np.float32)
out = {}


def proba(result):
    return result.as_numpy("probabilities")[:, 1].tolist()


def code_of(call):
    try:
        call()
        return "OK"
    except InferenceServerException as e:
        return str(e.status())


hc = th.InferenceServerClient(http_addr)
gc = tg.InferenceServerClient(grpc_addr)
admin = th.InferenceServerClient(admin_addr)
out["index_before"] = sorted((m["name"], m.get("state", "")) for m in admin.get_model_repository_index(headers=auth))
admin.load_model("dtypes", headers=auth)
out["http_health"] = [hc.is_server_live(), hc.is_server_ready(), hc.is_model_ready("fraud")]
out["grpc_health"] = [gc.is_server_live(), gc.is_server_ready(), gc.is_model_ready("fraud"), gc.is_model_ready("nope")]
out["http_metadata"] = hc.get_model_metadata("fraud")
grpc_meta = gc.get_model_metadata("fraud", as_json=True)
out["grpc_metadata"] = {"name": grpc_meta["name"], "inputs": grpc_meta["inputs"], "outputs": grpc_meta["outputs"]}
# grpc.health.v1.Health/Check with an empty service name: HealthCheckResponse{status: SERVING=1}.
health = grpc.insecure_channel(grpc_addr).unary_unary(
    "/grpc.health.v1.Health/Check", request_serializer=lambda b: b, response_deserializer=lambda b: b
)
out["grpc_health_v1"] = list(health(b""))
out["server_extensions"] = gc.get_server_metadata(as_json=True)["extensions"]
out["http_config"] = hc.get_model_config("fraud")
out["grpc_config"] = gc.get_model_config("fraud", as_json=True)["config"]

# Inference: JSON and binary over HTTP, raw contents, typed contents and a stream over gRPC.
for binary in (False, True):
    i = th.InferInput("input", list(rows.shape), "FP32")
    i.set_data_from_numpy(rows, binary_data=binary)
    outputs = [th.InferRequestedOutput("probabilities", binary_data=binary), th.InferRequestedOutput("label", binary_data=binary)]
    out[f"http_{'binary' if binary else 'json'}"] = proba(hc.infer("fraud", [i], outputs=outputs))
i = tg.InferInput("input", list(rows.shape), "FP32")
i.set_data_from_numpy(rows)
out["grpc_raw"] = proba(gc.infer("fraud", [i]))

stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(grpc_addr))
request = service_pb2.ModelInferRequest(model_name="fraud", id="typed-1")
t = request.inputs.add()
t.name, t.datatype = "input", "FP32"
t.shape.extend(rows.shape)
t.contents.fp32_contents.extend(rows.flatten().tolist())
request.outputs.add().name = "probabilities"
response = stub.ModelInfer(request)
typed = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(list(response.outputs[0].shape))
out["grpc_typed"] = typed[:, 1].tolist()
out["grpc_typed_id"] = response.id

streamed = []
gc.start_stream(callback=lambda result, error: streamed.append((result, error)))
for k in range(len(rows)):
    i = tg.InferInput("input", [1, rows.shape[1]], "FP32")
    i.set_data_from_numpy(rows[k : k + 1])
    gc.async_stream_infer("fraud", [i], request_id=str(k))
bad = tg.InferInput("input", [1, 3], "FP32")
bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
gc.async_stream_infer("fraud", [bad], request_id="bad")
gc.stop_stream()
out["grpc_stream"] = [r.as_numpy("probabilities")[0, 1].item() for r, e in streamed if e is None]
out["grpc_stream_ids"] = [r.get_response().id for r, e in streamed if e is None]
out["grpc_stream_errors"] = [str(e) for r, e in streamed if e is not None]

# Every datatype through the binary extension and raw gRPC contents (an Identity per datatype).
samples = {
    "BOOL": np.array([True, False]), "UINT8": np.array([0, 255], dtype=np.uint8),
    "UINT16": np.array([1, 65535], dtype=np.uint16), "UINT32": np.array([1, 2**32 - 1], dtype=np.uint32),
    "UINT64": np.array([1, 2**64 - 1], dtype=np.uint64), "INT8": np.array([-128, 127], dtype=np.int8),
    "INT16": np.array([-300, 300], dtype=np.int16), "INT32": np.array([-70000, 70000], dtype=np.int32),
    "INT64": np.array([-(2**62), 2**62], dtype=np.int64), "FP16": np.array([0.5, -2.0], dtype=np.float16),
    "FP32": np.array([0.25, -1e30], dtype=np.float32), "FP64": np.array([0.125, 1e300], dtype=np.float64),
    "BYTES": np.array([b"caf\xc3\xa9", b""], dtype=np.object_),
}
hin, gin = [], []
for dt, value in samples.items():
    hi = th.InferInput(f"in_{dt.lower()}", [2], dt)
    hi.set_data_from_numpy(value, binary_data=True)
    hin.append(hi)
    gi = tg.InferInput(f"in_{dt.lower()}", [2], dt)
    gi.set_data_from_numpy(value)
    gin.append(gi)
hr = hc.infer("dtypes", hin, outputs=[th.InferRequestedOutput(f"out_{dt.lower()}", binary_data=True) for dt in samples])
gr = gc.infer("dtypes", gin)
same = {
    dt: [bool(np.array_equal(hr.as_numpy(f"out_{dt.lower()}"), v)), bool(np.array_equal(gr.as_numpy(f"out_{dt.lower()}"), v))]
    for dt, v in samples.items()
}
out["dtypes_round_trip"] = same

# Errors: the gRPC status codes and HTTP answers of the same mistakes.
wrong = tg.InferInput("input", [1, 3], "FP32")
wrong.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
hwrong = th.InferInput("input", [1, 3], "FP32")
hwrong.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
out["errors"] = {
    "grpc_unknown_model": code_of(lambda: gc.infer("nope", [wrong])),
    "grpc_bad_shape": code_of(lambda: gc.infer("fraud", [wrong])),
    "http_bad_shape": code_of(lambda: hc.infer("fraud", [hwrong])),
    "grpc_repository_without_token": code_of(lambda: gc.get_model_repository_index()),
    "grpc_repository_wrong_token": code_of(lambda: gc.get_model_repository_index(headers={"authorization": "Bearer nope"})),
    "grpc_unload_own_model": code_of(lambda: gc.unload_model("fraud", headers=auth)),
    "http_load_unknown": code_of(lambda: th.InferenceServerClient(admin_addr).load_model("ghost", headers=auth)),
}

# The repository: index, load over HTTP (admin listener), infer, unload over gRPC.
admin.load_model("lr", headers=auth)
out["lr_ready_after_load"] = [hc.is_model_ready("lr"), gc.is_model_ready("lr")]
i = tg.InferInput("input", list(rows.shape), "FP32")
i.set_data_from_numpy(rows)
out["lr_grpc"] = proba(gc.infer("lr", [i]))
index = gc.get_model_repository_index(headers=auth, as_json=True)["models"]
out["index_loaded"] = sorted((m["name"], m.get("state", "")) for m in index)
gc.unload_model("lr", headers=auth)
out["lr_ready_after_unload"] = [hc.is_model_ready("lr"), gc.is_model_ready("lr")]
stats = gc.get_inference_statistics("fraud", as_json=True)["model_stats"][0]
out["fraud_stats"] = {k: stats.get(k) for k in ("name", "inference_count", "execution_count")}
print(json.dumps(out))
