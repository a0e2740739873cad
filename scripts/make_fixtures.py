#!/usr/bin/env python3
"""Regenerates the example model and the test fixtures, deterministically (fixed seeds).

Writes:
  examples/models/fraud.onnx            GradientBoostingClassifier, 100 trees of depth 3, input `input` FP32 [N, 30]
  testdata/models/*.onnx                the other fixture models (see MODELS below, plus dtypes.onnx and slow.onnx)
  testdata/reference/*.json             inputs and the outputs of onnxruntime in Python for each classifier
  testdata/models/nepse_xgboost.onnx    the edge model: an XGBoost classifier of 4 daily stock features
                                        (NEPSE-style), input `input` FP32 [N, 4]

`make_fixtures.py nepse_xgboost` writes only the edge model and its reference.
  testdata/validate/holdout.{csv,parquet}   500 held-out rows (f0..f29, is_fraud) for `modelship validate`
  testdata/models/renamed_input.onnx    logistic_regression.onnx with its input renamed `features` (a contract break)

The committed files are what the tests use; run this only to change them:
  python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements-fixtures.txt
  .venv/bin/python scripts/make_fixtures.py
  .venv/bin/python scripts/make_fixtures.py validate   # only the validation data and renamed_input.onnx
"""
import json
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from sklearn.datasets import make_classification
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "testdata" / "models"
REFERENCE = ROOT / "testdata" / "reference"
VALIDATE = ROOT / "testdata" / "validate"
N_FEATURES = 30
OPSET = {"": 17, "ai.onnx.ml": 3}


def data():
    x, y = make_classification(
        n_samples=4000, n_features=N_FEATURES, n_informative=12, n_redundant=6,
        weights=[0.9, 0.1], random_state=42,
    )
    return x.astype(np.float32), y


def sklearn_to_onnx(model, path):
    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
        options={id(model): {"zipmap": False}},
        target_opset=OPSET,
    )
    # skl2onnx names the outputs label / probabilities; keep them, they are what the seed expects.
    path.write_bytes(onx.SerializeToString())


def xgboost_to_onnx(model, path):
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType as MlFloat

    onx = onnxmltools.convert_xgboost(
        model, initial_types=[("input", MlFloat([None, N_FEATURES]))], target_opset=15
    )
    path.write_bytes(onx.SerializeToString())


def reference(name, path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    doc = {
        "model": str(path.relative_to(ROOT)),
        "onnxruntime": ort.__version__,
        "input": {"name": "input", "datatype": "FP32", "shape": list(x.shape),
                  "data": [float(v) for v in x.ravel()]},
        "outputs": [
            {"name": n, "datatype": {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64"}[o.dtype],
             "shape": list(o.shape), "data": [v.item() for v in o.ravel()]}
            for n, o in zip(names, outputs)
        ],
    }
    (REFERENCE / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")


def dtypes_model(path):
    """One Identity per OIP datatype: input in_<T> [N] -> output out_<T> [N]."""
    types = {
        "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
        "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
        "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
        "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
        "BYTES": TensorProto.STRING,
    }
    inputs, outputs, nodes = [], [], []
    for name, t in types.items():
        low = name.lower()
        inputs.append(helper.make_tensor_value_info(f"in_{low}", t, ["N"]))
        outputs.append(helper.make_tensor_value_info(f"out_{low}", t, ["N"]))
        nodes.append(helper.make_node("Identity", [f"in_{low}"], [f"out_{low}"]))
    graph = helper.make_graph(nodes, "dtypes", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelship-fixtures", ir_version=8)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def slow_model(path, size=128):
    """A deliberately slow model: `iterations` (INT64 scalar) rounds of v = tanh(v @ W), then the sum.

    Tests use it for in-flight work of a chosen duration (graceful drain, overload), with no test
    hooks in the server.
    """
    rng = np.random.default_rng(7)
    # Gain 2 keeps v = tanh(v @ W) of order 1: with gain 1 it decays towards denormal floats,
    # whose arithmetic is slow on some CPUs, and each iteration gets slower than the last.
    w = (2.0 * rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    v0 = np.eye(size, dtype=np.float32)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["v_in", "W"], ["prod"]),
            helper.make_node("Tanh", ["prod"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [size, size]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [size, size]),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
            helper.make_node("Loop", ["iterations", "cond", "V0"], ["v_final"], body=body),
            helper.make_node("ReduceSum", ["v_final"], ["sum"], keepdims=0),
        ],
        "slow",
        [helper.make_tensor_value_info("iterations", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [])],
        initializer=[
            helper.make_tensor("W", TensorProto.FLOAT, [size, size], w.ravel().tolist()),
            helper.make_tensor("V0", TensorProto.FLOAT, [size, size], v0.ravel().tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelship-fixtures", ir_version=8)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def broken_model(path):
    """Takes the fraud models' input (`input` FP32 [N, 30]) and fails at run time (a Reshape to 7
    elements): a candidate whose every answer is a server error, for rollback tests."""
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["shape"], value=helper.make_tensor("s", TensorProto.INT64, [1], [7])),
            helper.make_node("Reshape", ["input", "shape"], ["reshaped"]),
            helper.make_node("ReduceSum", ["reshaped"], ["probabilities"], keepdims=1),
        ],
        "broken",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 30])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelship-fixtures", ir_version=8)
    path.write_bytes(model.SerializeToString())


def faulty_model(path):
    """Takes the fraud models' input (`input` FP32 [N, 30]) and answers a probability per row,
    but fails at run time (a Reshape to rows of 31) whenever a feature is above 1.5: small
    warm-up values pass, real traffic fails. A candidate that loads and warms up, then fails in
    production, for the rollback tests."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["input"], ["max"], keepdims=0),
            helper.make_node("Constant", [], ["threshold"], value=helper.make_tensor("t", TensorProto.FLOAT, [], [1.5])),
            helper.make_node("Greater", ["max", "threshold"], ["too_big"]),
            helper.make_node("Cast", ["too_big"], ["extra"], to=TensorProto.INT64),
            helper.make_node("Constant", [], ["zero_axis"], value=helper.make_tensor("z", TensorProto.INT64, [1], [0])),
            helper.make_node("Unsqueeze", ["extra", "zero_axis"], ["extra_1"]),
            helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z0", TensorProto.INT64, [1], [0])),
            helper.make_node("Concat", ["zero", "extra_1"], ["offset"], axis=0),
            helper.make_node("Constant", [], ["base"], value=helper.make_tensor("b", TensorProto.INT64, [2], [-1, 30])),
            helper.make_node("Add", ["base", "offset"], ["shape"]),
            helper.make_node("Reshape", ["input", "shape"], ["rows"]),
            helper.make_node("Constant", [], ["axes"], value=helper.make_tensor("a", TensorProto.INT64, [1], [1])),
            helper.make_node("ReduceMean", ["rows", "axes"], ["mean"], keepdims=0),
            helper.make_node("Sigmoid", ["mean"], ["probabilities"]),
        ],
        "faulty",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 30])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="modelship-fixtures", ir_version=8)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


NEPSE_FEATURES = ["return_1d", "return_5d", "volume_ratio", "range_pct"]


def nepse_data(days=3000, seed=7):
    """A synthetic daily series shaped like the seed's NEPSE data: a random walk with momentum,
    volume bursts and intraday ranges, turned into 4 features and "the close rises tomorrow"."""
    rng = np.random.default_rng(seed)
    drift = np.convolve(rng.normal(0, 0.004, days + 30), np.ones(10) / 10, mode="same")
    close = 1800 * np.exp(np.cumsum(drift + rng.normal(0, 0.012, days + 30)))
    volume = rng.lognormal(13, 0.4, days + 30) * (1 + 3 * (np.abs(np.diff(close, prepend=close[0])) / close > 0.02))
    high = close * (1 + np.abs(rng.normal(0, 0.008, days + 30)))
    low = close * (1 - np.abs(rng.normal(0, 0.008, days + 30)))
    t = np.arange(20, days + 20)
    x = np.stack([
        close[t] / close[t - 1] - 1,
        close[t] / close[t - 5] - 1,
        volume[t] / np.array([volume[i - 20:i].mean() for i in t]),
        (high[t] - low[t]) / close[t],
    ], axis=1).astype(np.float32)
    y = (close[t + 1] > close[t]).astype(np.int64)
    return x, y


def nepse_model():
    import onnxmltools
    import xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType as MlFloat

    x, y = nepse_data()
    model = xgboost.XGBClassifier(n_estimators=60, max_depth=3, learning_rate=0.1, random_state=0, n_jobs=1)
    model.fit(x[:2500], y[:2500])
    path = MODELS / "nepse_xgboost.onnx"
    onx = onnxmltools.convert_xgboost(model, initial_types=[("input", MlFloat([None, len(NEPSE_FEATURES)]))], target_opset=15)
    path.write_bytes(onx.SerializeToString())
    reference("nepse_xgboost", path, x[2500:2516])
    print(f"nepse_xgboost: {path.relative_to(ROOT)} ({path.stat().st_size} bytes), features {NEPSE_FEATURES}")


def validation_data(x, y):
    """Rows 3000-3499, which no fixture model was trained on, rounded to 3 decimals (the file is the
    data: its values are what every model sees), as CSV and as Parquet (FLOAT columns, INT64 label)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    VALIDATE.mkdir(parents=True, exist_ok=True)
    rows = np.round(x[3000:3500].astype(np.float64), 3)
    labels = y[3000:3500].astype(np.int64)
    names = [f"f{i}" for i in range(N_FEATURES)]
    lines = [",".join(names + ["is_fraud"])]
    for row, label in zip(rows, labels):
        lines.append(",".join(f"{v:.3f}" for v in row) + f",{label}")
    (VALIDATE / "holdout.csv").write_text("\n".join(lines) + "\n")
    columns = {n: pa.array(rows[:, i].astype(np.float32)) for i, n in enumerate(names)}
    columns["is_fraud"] = pa.array(labels)
    pq.write_table(pa.table(columns), VALIDATE / "holdout.parquet", compression="snappy", use_dictionary=False)


def renamed_input_model(source, path):
    """`source` with its graph input `input` renamed `features`: the same model, a broken contract."""
    model = onnx.load(str(source))
    for value in model.graph.input:
        if value.name == "input":
            value.name = "features"
    for node in model.graph.node:
        node.input[:] = ["features" if i == "input" else i for i in node.input]
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def validate_fixtures():
    x, y = data()
    validation_data(x, y)
    renamed_input_model(MODELS / "logistic_regression.onnx", MODELS / "renamed_input.onnx")
    print("validate: testdata/validate/holdout.csv, holdout.parquet, testdata/models/renamed_input.onnx")


def main():
    import sys
    if sys.argv[1:] == ["nepse_xgboost"]:
        nepse_model()
        return
    if sys.argv[1:] == ["faulty"]:
        faulty_model(MODELS / "faulty.onnx")
        return
    if sys.argv[1:] == ["validate"]:
        validate_fixtures()
        return
    MODELS.mkdir(parents=True, exist_ok=True)
    REFERENCE.mkdir(parents=True, exist_ok=True)
    (ROOT / "examples" / "models").mkdir(parents=True, exist_ok=True)
    x, y = data()
    x_train, y_train, x_ref = x[:3000], y[:3000], x[3000:3016]

    import xgboost

    classifiers = {
        # The example model is also the gradient-boosting fixture: the same file the README serves.
        "gradient_boosting": (GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0),
                              ROOT / "examples" / "models" / "fraud.onnx", sklearn_to_onnx),
        "random_forest": (RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0),
                          MODELS / "random_forest.onnx", sklearn_to_onnx),
        "logistic_regression": (LogisticRegression(max_iter=500, random_state=0),
                                MODELS / "logistic_regression.onnx", sklearn_to_onnx),
        "mlp": (MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=300, random_state=0),
                MODELS / "mlp.onnx", sklearn_to_onnx),
        "xgboost": (xgboost.XGBClassifier(n_estimators=40, max_depth=4, random_state=0, n_jobs=1),
                    MODELS / "xgboost.onnx", xgboost_to_onnx),
    }
    for name, (model, path, convert) in classifiers.items():
        model.fit(x_train, y_train)
        convert(model, path)
        reference(name, path, x_ref)
        print(f"{name}: {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")
    nepse_model()
    dtypes_model(MODELS / "dtypes.onnx")
    slow_model(MODELS / "slow.onnx")
    broken_model(MODELS / "broken.onnx")
    faulty_model(MODELS / "faulty.onnx")
    print("dtypes, slow, broken, faulty: done")
    validate_fixtures()


if __name__ == "__main__":
    main()
