"""modelship's model converter: scikit-learn, XGBoost and LightGBM models to ONNX.

Run by `modelship` (crates/convert), never by the server, inside a sandbox (bubblewrap): no
network, a read-only view of the interpreter and its environment, one writable scratch
directory, limits on memory, CPU time and file size. Two commands (and `describe`, which
modelship runs outside the sandbox to learn what an interpreter it trusts has):

  convert.py inspect SOURCE
      Standard library only, loads nothing: the pickle's compression, the modules its globals
      name, and the library versions it records (scikit-learn keeps `_sklearn_version` in each
      estimator's state). Prints one JSON object.

  convert.py convert REQUEST.json
      Loads the model (this is where a pickle runs), converts it with skl2onnx or onnxmltools,
      draws or reads the sample rows and runs the original on them. Writes model.onnx and
      result.json (the options used, the versions, the sample inputs and the original's
      outputs) into the request's output directory. modelship then runs model.onnx in ONNX
      Runtime on the same inputs and compares: this script never judges its own conversion.

Exit codes: 0 done, 2 the model or request is refused (result.json holds {"error": ...}).
"""

import json
import os
import re
import sys

PROTOCOL = 1
# onnxmltools 1.16 converts boosters up to this opset of the default domain.
ONNXMLTOOLS_MAX_OPSET = 15


class Refused(Exception):
    """The model cannot be converted; the message says why and what to do."""


# --------------------------------------------------------------------------- inspect


def decompressed(data):
    """A joblib file may be zlib, gzip, bz2, xz or lzma compressed; a pickle is not."""
    if data[:2] == b"\x1f\x8b":
        import gzip

        return "gzip", gzip.decompress(data)
    if data[:3] == b"BZh":
        import bz2

        return "bz2", bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        import lzma

        return "xz", lzma.decompress(data)
    if data[:2] in (b"x\x01", b"x\x5e", b"x\x9c", b"x\xda"):
        import zlib

        return "zlib", zlib.decompress(data)
    if data[:2] == b"ZF":  # joblib's own zlib framing (joblib < 0.10)
        import zlib

        return "zlib", zlib.decompress(data[data.index(b"x"):])
    if data[:1] == b"]" and data[1:5] in (b"\x00\x00\x80\x00", b"\x00\x00\x00\x01"):
        import lzma

        return "lzma", lzma.decompress(data, format=lzma.FORMAT_ALONE)
    return None, data


# A pickled string: SHORT_BINUNICODE (protocol 4+), BINUNICODE, or SHORT_BINSTRING/BINSTRING.
STRING = rb"(?:\x8c(?P<s1>[\x00-\xff])|X(?P<s4>[\x00-\xff]{4})|U(?P<b1>[\x00-\xff]))"
# Optional memo opcodes between pushes: MEMOIZE, BINPUT n, LONG_BINPUT n.
MEMO = rb"(?:\x94|q[\x00-\xff]|r[\x00-\xff]{4})?"


def strings_after(data, key):
    """The string values pickled right after each occurrence of the string `key`."""
    found = []
    for m in re.finditer(re.escape(key) + MEMO + STRING, data):
        if m.group("s1") is not None:
            n = m.group("s1")[0]
        elif m.group("b1") is not None:
            n = m.group("b1")[0]
        else:
            n = int.from_bytes(m.group("s4"), "little")
        value = data[m.end(): m.end() + n]
        try:
            found.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    return found


def modules_named(data):
    """Top-level packages named by the pickle's globals (GLOBAL and STACK_GLOBAL)."""
    names = set()
    for m in re.finditer(rb"c([A-Za-z_][\w.]*)\n[A-Za-z_][\w.]*\n", data):
        names.add(m.group(1).decode())
    pattern = rb"\x8c[\x00-\xff]([A-Za-z_][\w.]*)" + MEMO + rb"\x8c[\x00-\xff]([A-Za-z_][\w.]*)" + MEMO + rb"\x93"
    for m in re.finditer(pattern, data):
        names.add(m.group(1).decode())
    return sorted({n.split(".")[0] for n in names})


def inspect_skops(path):
    """A skops file's schema: the modules its objects come from and the scikit-learn version
    its estimators recorded. Reads JSON; builds nothing."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        schema = json.loads(z.read("schema.json"))
    modules, versions = set(), set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("__module__"), str):
                modules.add(node["__module__"].split(".")[0])
            version = node.get("_sklearn_version")
            if isinstance(version, dict) and isinstance(version.get("content"), str):
                try:
                    versions.add(str(json.loads(version["content"])))
                except ValueError:
                    versions.add(version["content"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return {
        "protocol": PROTOCOL,
        "compression": "zip",
        "pickle_protocol": None,
        "joblib": False,
        "modules": sorted(modules),
        "versions": {"scikit-learn": sorted(versions)} if versions else {},
    }


def inspect(path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:4] == b"PK\x03\x04":
        return inspect_skops(path)
    compression, data = decompressed(raw)
    if data[:1] != b"\x80" and not data[:1] in (b"(", b"c", b"]", b"}"):
        raise Refused("not a pickle: it starts with neither a pickle protocol header nor a joblib compression header")
    protocol = data[1] if data[:1] == b"\x80" else 0
    versions = {}
    sk = [v for v in strings_after(data, b"_sklearn_version") if re.fullmatch(r"\d+\.\d+(\.\d+)?\S*", v)]
    if sk:
        versions["scikit-learn"] = sorted(set(sk))
    modules = modules_named(data)
    return {
        "protocol": PROTOCOL,
        "compression": compression,
        "pickle_protocol": protocol,
        "joblib": b"NumpyArrayWrapper" in data,
        "modules": modules,
        "versions": versions,
    }


# --------------------------------------------------------------------------- convert


def library_versions():
    import importlib.metadata as md

    out = {}
    for dist in ("scikit-learn", "xgboost", "xgboost-cpu", "lightgbm", "skl2onnx", "onnxmltools", "onnx", "numpy", "scipy", "pandas", "joblib", "skops"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    if "xgboost-cpu" in out:
        out["xgboost"] = out.pop("xgboost-cpu")
    return out


def load(path, fmt):
    if fmt == "pickle":
        import joblib  # reads plain pickles too, and joblib's inline arrays and compression

        return joblib.load(path)
    if fmt in ("xgboost-json", "xgboost-ubj"):
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(path)
        return booster
    if fmt == "lightgbm-text":
        import lightgbm

        return lightgbm.Booster(model_file=path)
    if fmt == "skops":
        import skops.io

        # The types it names are trusted here: the sandbox is what contains them.
        return skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
    raise Refused(f"unknown source format {fmt}")


def kind_of(model):
    """('sklearn' | 'xgboost-booster' | 'lightgbm-booster', task) where task is 'classifier' or 'regressor'."""
    module = type(model).__module__
    if module.startswith("xgboost") and type(model).__name__ == "Booster":
        objective = json.loads(model.save_config())["learner"]["objective"]["name"]
        if objective.startswith(("binary:", "multi:")):
            return "xgboost-booster", "classifier"
        if objective.startswith(("reg:", "count:", "survival:")):
            return "xgboost-booster", "regressor"
        raise Refused(f"XGBoost objective {objective} is neither classification nor regression")
    if module.startswith("lightgbm") and type(model).__name__ == "Booster":
        objective = model.dump_model().get("objective", "regression").split(" ")[0]
        if objective in ("binary", "multiclass", "multiclassova", "cross_entropy"):
            return "lightgbm-booster", "classifier"
        if objective.startswith(("regression", "huber", "fair", "poisson", "quantile", "mape", "gamma", "tweedie")):
            return "lightgbm-booster", "regressor"
        raise Refused(f"LightGBM objective {objective} is neither classification nor regression")
    top = module.split(".")[0]
    if top in ("sklearn", "xgboost", "lightgbm") and hasattr(model, "predict"):
        from sklearn.base import is_classifier, is_regressor

        if is_classifier(model) and hasattr(model, "predict_proba"):
            return "sklearn", "classifier"
        if is_regressor(model):
            return "sklearn", "regressor"
        raise Refused(f"{type(model).__name__} is neither a classifier with predict_proba nor a regressor")
    what = f"{module}.{type(model).__name__}"
    raise Refused(
        f"the file holds a {what}, not a scikit-learn, XGBoost or LightGBM model; "
        "export other frameworks to ONNX yourself (PyTorch: torch.onnx.export, TensorFlow/Keras: tf2onnx)"
    )


def steps(model):
    """Every estimator inside a pipeline, column transformer or ensemble, the model included."""
    seen = [model]
    out = []
    while seen:
        m = seen.pop()
        out.append(m)
        for attr in ("steps",):
            for _, s in getattr(m, attr, None) or []:
                if hasattr(s, "fit"):
                    seen.append(s)
        for _, s, _ in getattr(m, "transformers_", None) or []:
            if hasattr(s, "fit"):
                seen.append(s)
    return out


def column_layout(model):
    """Per-column inputs for a model fitted on a DataFrame through a ColumnTransformer: a list of
    (name, 'string' | 'float'), or None for one float matrix."""
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        return None
    transformers = [s for s in steps(model) if type(s).__name__ == "ColumnTransformer"]
    if not transformers:
        return None
    strings = set()
    for ct in transformers:
        for _, est, cols in ct.transformers_:
            if isinstance(cols, str):
                cols = [cols]
            cats = getattr(est, "categories_", None)
            if cats is None and hasattr(est, "steps"):
                for _, s in est.steps:
                    cats = getattr(s, "categories_", None) or cats
            if cats is not None and not isinstance(cols, slice):
                for col, c in zip(cols, cats):
                    if getattr(c, "dtype", None) is not None and c.dtype.kind in ("O", "U", "S"):
                        strings.add(col if isinstance(col, str) else str(names[col]))
    return [(str(n), "string" if str(n) in strings else "float") for n in names]


def width(model, kind):
    if kind == "xgboost-booster":
        return model.num_features()
    if kind == "lightgbm-booster":
        return model.num_feature()
    n = getattr(model, "n_features_in_", None)
    if n is None:
        raise Refused(f"{type(model).__name__} does not record its input width (n_features_in_); refit it with scikit-learn >= 1.0")
    return int(n)


def feature_ranges(model, kind, n):
    """Per feature: (low, high, thresholds) from what the estimators record; None where unknown."""
    import numpy as np

    lows = [None] * n
    highs = [None] * n
    cuts = [[] for _ in range(n)]

    def widen(i, lo, hi):
        if not (np.isfinite(lo) and np.isfinite(hi)):
            return
        lows[i] = lo if lows[i] is None else min(lows[i], lo)
        highs[i] = hi if highs[i] is None else max(highs[i], hi)

    if kind == "lightgbm-booster":
        for i, info in enumerate(model.dump_model().get("feature_infos", {}).values()):
            m = re.fullmatch(r"\[(.*):(.*)\]", info.get("min_value") is not None and f"[{info['min_value']}:{info['max_value']}]" or "")
            if m and i < n:
                widen(i, float(m.group(1)), float(m.group(2)))
        for tree in model.dump_model()["tree_info"]:
            walk_lgb(tree["tree_structure"], cuts)
        return lows, highs, cuts
    if kind == "xgboost-booster":
        walk_xgb(model, cuts)
        return lows, highs, cuts
    for est in steps(model):
        name = type(est).__name__
        if name == "StandardScaler" and getattr(est, "mean_", None) is not None and len(est.mean_) == n:
            for i in range(n):
                widen(i, est.mean_[i] - 3 * est.scale_[i], est.mean_[i] + 3 * est.scale_[i])
        elif name == "MinMaxScaler" and len(est.data_min_) == n:
            for i in range(n):
                widen(i, est.data_min_[i], est.data_max_[i])
        elif name == "RobustScaler" and getattr(est, "center_", None) is not None and len(est.center_) == n:
            for i in range(n):
                widen(i, est.center_[i] - 3 * est.scale_[i], est.center_[i] + 3 * est.scale_[i])
        trees = []
        if hasattr(est, "tree_"):
            trees = [est]
        elif hasattr(est, "estimators_"):
            trees = [t for t in np.ravel(est.estimators_) if hasattr(t, "tree_")]
        for t in trees:
            if getattr(t, "n_features_in_", n) != n:
                continue
            for f, thr in zip(t.tree_.feature, t.tree_.threshold):
                if f >= 0:
                    cuts[f].append(float(thr))
        mapper = getattr(est, "_bin_mapper", None)
        if mapper is not None and len(mapper.bin_thresholds_) == n:
            for i, thr in enumerate(mapper.bin_thresholds_):
                cuts[i].extend(float(x) for x in thr)
        if name in ("XGBClassifier", "XGBRegressor"):
            walk_xgb(est.get_booster(), cuts)
        if name in ("LGBMClassifier", "LGBMRegressor"):
            for tree in est.booster_.dump_model()["tree_info"]:
                walk_lgb(tree["tree_structure"], cuts)
    return lows, highs, cuts


def walk_lgb(node, cuts):
    while node is not None and "split_feature" in node:
        f = node["split_feature"]
        if f < len(cuts) and isinstance(node.get("threshold"), (int, float)):
            cuts[f].append(float(node["threshold"]))
        walk_lgb(node.get("left_child"), cuts)
        node = node.get("right_child")


def walk_xgb(booster, cuts):
    names = booster.feature_names
    for text in booster.get_dump(dump_format="json"):
        stack = [json.loads(text)]
        while stack:
            node = stack.pop()
            if "split" in node:
                split = node["split"]
                f = names.index(split) if names and split in names else int(str(split).lstrip("f"))
                if f < len(cuts):
                    cuts[f].append(float(node["split_condition"]))
                stack.extend(node.get("children", []))


def drawn_rows(model, kind, n, count, seed):
    """Rows drawn to the model's input width: half uniformly inside the ranges the estimators
    record (wider than the splits they learnt), half with features set exactly onto split
    thresholds as float32 rounds them, where a conversion that changes a threshold's precision
    sends a row the other way."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lows, highs, cuts = feature_ranges(model, kind, n)
    X = np.empty((count, n), dtype=np.float64)
    drawn_rows.unranged = sum(1 for i in range(n) if lows[i] is None and not cuts[i])
    for i in range(n):
        c = np.asarray(cuts[i], dtype=np.float64)
        c = c[np.isfinite(c)]
        lo, hi = lows[i], highs[i]
        if c.size:
            lo = min(lo, c.min()) if lo is not None else c.min()
            hi = max(hi, c.max()) if hi is not None else c.max()
        if lo is None or hi is None or not hi > lo:
            centre = 0.0 if lo is None else lo
            lo, hi = centre - 3.0, centre + 3.0
        span = hi - lo
        X[:, i] = rng.uniform(lo - 0.1 * span, hi + 0.1 * span, size=count)
        if c.size:
            on_cut = rng.random(count) < 0.5
            picks = c[rng.integers(0, c.size, size=count)].astype(np.float32).astype(np.float64)
            X[on_cut, i] = picks[on_cut]
    # Missing values, for the models that route them (boosted trees learn a default branch);
    # a server receives them as NaN.
    if handles_missing(model, kind):
        X[rng.random((count, n)) < 0.03] = np.nan
    return X


def handles_missing(model, kind):
    if kind in ("xgboost-booster", "lightgbm-booster"):
        return True
    names = {type(s).__name__ for s in steps(model)}
    return bool(names & {"HistGradientBoostingClassifier", "HistGradientBoostingRegressor", "XGBClassifier", "XGBRegressor", "LGBMClassifier", "LGBMRegressor"})


def sample_frame(request, model, layout, n):
    """The user's sample: columns by name, as {name: [values]}."""
    import numpy as np

    columns = request["sample"]["columns"]
    if layout is not None:
        missing = [name for name, _ in layout if name not in columns]
        if missing:
            raise Refused(f"the sample has no column {', '.join(missing)} (the model was fitted on columns {', '.join(n for n, _ in layout)})")
        return {name: columns[name] for name, _ in layout}
    names = getattr(model, "feature_names_in_", None)
    if names is not None and all(str(c) in columns for c in names):
        picked = [str(c) for c in names]
    else:
        numeric = [c for c, v in columns.items() if all(isinstance(x, (int, float)) for x in v)]
        if len(numeric) != n:
            raise Refused(
                f"the sample has {len(numeric)} numeric columns ({', '.join(numeric)}); the model takes {n} features"
                + ("" if names is None else f" named {', '.join(map(str, names))}")
                + ": give a sample with exactly its feature columns"
            )
        picked = numeric
    return np.asarray([columns[c] for c in picked], dtype=np.float64).T


def original_outputs(model, kind, task, X, layout, feature_names):
    """What the original model answers: probabilities ordered as predict_proba, and labels, for
    a classifier; predictions for a regressor."""
    import numpy as np

    if kind in ("xgboost-booster", "lightgbm-booster"):
        if kind == "xgboost-booster":
            import xgboost

            raw = model.predict(xgboost.DMatrix(X))
        else:
            raw = model.predict(X)
        if task == "regressor":
            return {"prediction": raw.reshape(len(X), -1)}
        probs = raw.reshape(len(X), -1)
        if probs.shape[1] == 1:
            probs = np.hstack([1 - probs, probs])
        return {"probabilities": probs, "label": probs.argmax(axis=1)}
    if layout is not None or feature_names is not None:
        import pandas as pd

        if layout is not None:
            frame = pd.DataFrame({name: X[name] for name, _ in layout})
        else:
            frame = pd.DataFrame(X, columns=feature_names)
        data = frame
    else:
        data = X
    if task == "regressor":
        return {"prediction": np.asarray(model.predict(data), dtype=np.float64).reshape(len(X if layout is None else data), -1)}
    probs = np.asarray(model.predict_proba(data), dtype=np.float64)
    return {"probabilities": probs, "label": np.asarray(model.predict(data))}


def convert_model(model, kind, task, n, layout, precision, opset, ml_opset):
    """The ONNX model and the converter options that matter for equality."""
    options = {"target_opset": {"": opset, "ai.onnx.ml": ml_opset}, "precision": precision}
    if kind == "xgboost-booster":
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        if precision != "float32":
            raise Refused("onnxmltools converts XGBoost boosters with float32 inputs only (XGBoost itself splits on float32)")
        onx = convert_xgboost(model, initial_types=[("input", FloatTensorType([None, n]))], target_opset=min(opset, ONNXMLTOOLS_MAX_OPSET))
        options["converter"] = "onnxmltools.convert_xgboost"
        return onx, options
    if kind == "lightgbm-booster":
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        if precision != "float32":
            raise Refused("onnxmltools converts LightGBM boosters with float32 inputs and thresholds only")
        onx = convert_lightgbm(model, initial_types=[("input", FloatTensorType([None, n]))], target_opset=min(opset, ONNXMLTOOLS_MAX_OPSET), zipmap=False)
        options["converter"] = "onnxmltools.convert_lightgbm"
        options["zipmap"] = False
        return onx, options
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    plain_attributes()
    register_boosters()
    number = FloatTensorType if precision == "float32" else DoubleTensorType
    if layout is not None:
        initial = [(name, StringTensorType([None, 1]) if t == "string" else number([None, 1])) for name, t in layout]
    else:
        initial = [("input", number([None, n]))]
    conv_options = {}
    if task == "classifier":
        conv_options = {id(model): {"zipmap": False}}
        options["zipmap"] = False
    onx = convert_sklearn(model, initial_types=initial, target_opset=options["target_opset"], options=conv_options)
    options["converter"] = "skl2onnx.convert_sklearn"
    return onx, options


def plain_attributes():
    """skl2onnx 1.20 hands scikit-learn 1.9's numpy integers and booleans to onnx.helper.make_node,
    which refuses them in integer lists: the converter's nodes are built with plain ints."""
    import numpy as np
    import skl2onnx.common._container as container

    made = container.make_node
    if getattr(made, "_modelship_plain", False):
        return

    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, (bool, np.bool_, np.integer)):
            return int(v)
        return v

    def make_node(*args, **kwargs):
        return made(*args, **{k: plain(v) for k, v in kwargs.items()})

    make_node._modelship_plain = True
    container.make_node = make_node


def register_boosters():
    """XGBoost's and LightGBM's scikit-learn estimators inside pipelines, through skl2onnx's
    registry with onnxmltools' converters (skl2onnx's documented way). A library that is not
    installed has no estimators to register."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes, calculate_linear_regressor_output_shapes

    try:
        from xgboost import XGBClassifier, XGBRegressor
    except ImportError:
        XGBClassifier = None
    if XGBClassifier is not None:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

        update_registered_converter(XGBClassifier, "XGBoostXGBClassifier", calculate_linear_classifier_output_shapes, convert_xgboost, options={"nocl": [True, False], "zipmap": [True, False, "columns"]})
        update_registered_converter(XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost)
    try:
        from lightgbm import LGBMClassifier, LGBMRegressor
    except ImportError:
        LGBMClassifier = None
    if LGBMClassifier is not None:
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes, convert_lightgbm, options={"nocl": [True, False], "zipmap": [True, False, "columns"]})
        update_registered_converter(LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes, convert_lightgbm, options={"split": None})


def renamed_outputs(onx, task):
    """Plain tensor outputs with stable names: `label` and `probabilities` (ordered as
    predict_proba's columns) for a classifier, `prediction` for a regressor."""
    graph = onx.graph
    if task == "classifier":
        if len(graph.output) != 2:
            raise Refused(f"the converted classifier has {len(graph.output)} outputs, not a label and probabilities")
        wanted = ["label", "probabilities"]
    else:
        if len(graph.output) != 1:
            raise Refused(f"the converted regressor has {len(graph.output)} outputs, not one prediction")
        wanted = ["prediction"]
    for out, new in zip(graph.output, wanted):
        old = out.name
        if old == new:
            continue
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == old:
                    node.output[i] = new
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
        out.name = new
    return wanted


def double_thresholds(model, kind):
    """Every split threshold the trees hold in float64 (scikit-learn trees and histogram
    gradient boosting, LightGBM); XGBoost splits in float32 already."""
    import numpy as np

    found = []
    if kind == "lightgbm-booster":
        boosters = [model]
    else:
        boosters = [s.booster_ for s in steps(model) if type(s).__name__ in ("LGBMClassifier", "LGBMRegressor")] if kind == "sklearn" else []
    for b in boosters:
        cuts = [[] for _ in range(b.num_feature())]
        for tree in b.dump_model()["tree_info"]:
            walk_lgb(tree["tree_structure"], cuts)
        found.extend(c for per in cuts for c in per)
    if kind == "sklearn":
        for est in steps(model):
            trees = [est] if hasattr(est, "tree_") else [t for t in np.ravel(getattr(est, "estimators_", [])) if hasattr(t, "tree_")]
            for t in trees:
                found.extend(float(x) for f, x in zip(t.tree_.feature, t.tree_.threshold) if f >= 0)
            for predictors in getattr(est, "_predictors", None) or []:
                for p in predictors:
                    nodes = p.nodes
                    found.extend(float(x) for x, leaf in zip(nodes["num_threshold"], nodes["is_leaf"]) if not leaf)
    return found


def exact_thresholds(onx, thresholds):
    """Float32 thresholds that send every float32 input down the branch the float64 threshold
    sends it: `x <= t` for a float32 x holds exactly when `x <= t'`, t' the largest float32 not
    above t (and `x < t` when `x < t''`, the smallest not below). The converters round to the
    nearest float32 instead, which sends inputs equal to a threshold rounded up the other way.
    Returns how many thresholds moved and how many could not be decided (two float64
    thresholds rounding to one float32 from both sides: left as converted)."""
    import numpy as np

    direction = {}
    for t in thresholds:
        t32 = np.float32(t)
        if not np.isfinite(t32):
            continue
        side = 0 if float(t32) == t else (1 if float(t32) > t else -1)
        key = float(t32)
        direction[key] = side if direction.get(key, side) == side else None
    moved = undecided = 0
    for node in onx.graph.node:
        if node.domain != "ai.onnx.ml" or not node.op_type.startswith("TreeEnsemble"):
            continue
        attrs = {a.name: a for a in node.attribute}
        if "nodes_values" not in attrs or "nodes_modes" not in attrs:
            continue
        values = list(attrs["nodes_values"].floats)
        modes = [m.decode() for m in attrs["nodes_modes"].strings]
        for i, (v, mode) in enumerate(zip(values, modes)):
            side = direction.get(float(np.float32(v)), 0)
            if side is None:
                undecided += 1
                continue
            new = v
            if side > 0 and mode in ("BRANCH_LEQ", "BRANCH_GT"):
                new = float(np.nextafter(np.float32(v), np.float32(-np.inf)))
            elif side < 0 and mode in ("BRANCH_LT", "BRANCH_GTE"):
                new = float(np.nextafter(np.float32(v), np.float32(np.inf)))
            if new != v:
                values[i] = new
                moved += 1
        del attrs["nodes_values"].floats[:]
        attrs["nodes_values"].floats.extend(values)
    return moved, undecided


def classes_of(model, kind, probs_width):
    classes = getattr(model, "classes_", None)
    if classes is None:
        return list(range(probs_width))
    return [c.item() if hasattr(c, "item") else c for c in classes]


def jsonable(a):
    import numpy as np

    a = np.asarray(a)
    if a.dtype.kind in ("U", "S", "O"):
        return [str(x) for x in a.ravel()]
    if a.dtype.kind == "b":
        return [int(x) for x in a.ravel()]
    if a.dtype.kind in ("i", "u"):
        return [int(x) for x in a.ravel()]
    # JSON has no NaN: a missing value is null (read back as NaN).
    return [float(x) if x == x else None for x in a.ravel()]


def convert(request_path):
    import numpy as np

    with open(request_path) as f:
        request = json.load(f)
    out = request["output_dir"]
    model = load(request["source"], request["format"])
    kind, task = kind_of(model)
    n = width(model, kind)
    layout = column_layout(model) if kind == "sklearn" else None
    precision = request.get("precision", "float32")
    onx, options = convert_model(model, kind, task, n, layout, precision, request["opset"], request["ml_opset"])
    outputs = renamed_outputs(onx, task)
    if request.get("thresholds", "exact") == "exact" and precision == "float32":
        moved, undecided = exact_thresholds(onx, double_thresholds(model, kind))
        options["thresholds"] = {"rule": "exact for float32 inputs", "moved": moved, "undecided": undecided}
    else:
        options["thresholds"] = {"rule": "as converted"}
    options["target_opset"] = {(o.domain or ""): o.version for o in onx.opset_import}
    feature_names = getattr(model, "feature_names_in_", None)
    feature_names = None if feature_names is None else [str(x) for x in feature_names]
    dtype = np.float32 if precision == "float32" else np.float64

    if request.get("sample"):
        sampled = sample_frame(request, model, layout, n)
        origin = "given"
    else:
        origin = "drawn"
        sampled = None
    count = int(request.get("rows", 1000))
    if layout is not None:
        if sampled is None:
            sampled = drawn_columns(model, layout, count, int(request.get("seed", 0)))
        X = {}
        for name, t in layout:
            col = np.asarray(sampled[name], dtype=object if t == "string" else np.float64)
            X[name] = col.astype(str) if t == "string" else col.astype(dtype).astype(np.float64)
        rows = len(next(iter(X.values())))
        inputs = [
            {"name": name, "datatype": "BYTES" if t == "string" else ("FP32" if precision == "float32" else "FP64"), "shape": [rows, 1], "data": jsonable(X[name])}
            for name, t in layout
        ]
    else:
        if sampled is None:
            sampled = drawn_rows(model, kind, n, count, int(request.get("seed", 0)))
        X = np.asarray(sampled, dtype=np.float64).astype(dtype).astype(np.float64)
        rows = len(X)
        inputs = [{"name": "input", "datatype": "FP32" if precision == "float32" else "FP64", "shape": [rows, n], "data": jsonable(X)}]
    if rows == 0:
        raise Refused("the sample has no rows")
    expected = original_outputs(model, kind, task, X, layout, feature_names)
    answers = {}
    for name, values in expected.items():
        a = np.asarray(values)
        answers[name] = {"shape": list(a.shape), "data": jsonable(a)}
    classes = None
    if task == "classifier":
        classes = classes_of(model, kind, np.asarray(expected["probabilities"]).shape[1])
        meta = onx.metadata_props.add()
        meta.key = "classes"
        meta.value = json.dumps(classes)
    meta = onx.metadata_props.add()
    meta.key = "converted_by"
    meta.value = "modelship convert"
    with open(os.path.join(out, "model.onnx"), "wb") as f:
        f.write(onx.SerializeToString())
    estimator = type(model).__module__ + "." + type(model).__name__
    inner = [type(s).__module__ + "." + type(s).__name__ for s in steps(model)] if kind == "sklearn" else [estimator]
    result = {
        "protocol": PROTOCOL,
        "kind": kind,
        "task": task,
        "estimator": estimator,
        "estimators": sorted(set(inner)),
        "features": n,
        "feature_names": feature_names,
        "columns": None if layout is None else [{"name": a, "type": b} for a, b in layout],
        "classes": classes,
        "outputs": outputs,
        "options": options,
        "libraries": library_versions(),
        "python": sys.version.split()[0],
        # Features no estimator records a range for were drawn from [-3.3, 3.3]: a weaker proof.
        "sample": {"origin": origin, "rows": rows, "unranged_features": getattr(drawn_rows, "unranged", 0) if origin == "drawn" and layout is None else 0},
        "inputs": inputs,
        "expected": answers,
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)


def drawn_columns(model, layout, count, seed):
    """Rows for a model fitted on DataFrame columns: categories from the encoders, numbers
    inside the ranges the scalers record."""
    import numpy as np

    rng = np.random.default_rng(seed)
    categories = {}
    ranges = {}
    for ct in [s for s in steps(model) if type(s).__name__ == "ColumnTransformer"]:
        for _, est, cols in ct.transformers_:
            if isinstance(cols, str):
                cols = [cols]
            if isinstance(cols, slice) or not hasattr(cols, "__iter__"):
                continue
            cols = [str(c) for c in cols]
            parts = [est] + [s for _, s in getattr(est, "steps", [])]
            for p in parts:
                if getattr(p, "categories_", None) is not None:
                    for c, cats in zip(cols, p.categories_):
                        categories[c] = [x for x in cats if x == x]
                if type(p).__name__ == "StandardScaler" and getattr(p, "mean_", None) is not None:
                    for c, m, s in zip(cols, p.mean_, p.scale_):
                        ranges[c] = (m - 3 * s, m + 3 * s)
                if type(p).__name__ == "MinMaxScaler":
                    for c, lo, hi in zip(cols, p.data_min_, p.data_max_):
                        ranges[c] = (lo, hi)
    out = {}
    for name, t in layout:
        if t == "string":
            cats = categories.get(name) or ["a"]
            out[name] = [str(cats[i]) for i in rng.integers(0, len(cats), size=count)]
        elif name in categories:
            cats = np.asarray(categories[name], dtype=np.float64)
            out[name] = list(cats[rng.integers(0, len(cats), size=count)])
        else:
            lo, hi = ranges.get(name, (-3.0, 3.0))
            out[name] = list(rng.uniform(lo, hi, size=count))
    return out


def describe():
    """The interpreter and what it has (run by modelship outside the sandbox, on an interpreter
    it trusts: one of its environments, or the user's --python)."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix] + [p for p in sys.path if p]
    return {"python_version": sys.version.split()[0], "executable": sys.executable, "paths": paths, "libraries": library_versions()}


def main(argv):
    if argv[1:] == ["describe"]:
        print(json.dumps(describe()))
        return 0
    if len(argv) != 3 or argv[1] not in ("inspect", "convert"):
        print("usage: convert.py describe | inspect SOURCE | convert REQUEST.json", file=sys.stderr)
        return 64
    try:
        if argv[1] == "inspect":
            print(json.dumps(inspect(argv[2])))
        else:
            convert(argv[2])
        return 0
    except Refused as e:
        report_error(argv, str(e))
        return 2
    except MemoryError:
        report_error(argv, "out of memory within the converter's limit (raise MODELSHIP_CONVERT_MEMORY)")
        return 2
    except Exception as e:  # the model's own code failed: a short message, not a traceback
        report_error(argv, f"{type(e).__name__}: {e}")
        return 2


def report_error(argv, message):
    # The first line: converters put whole attribute dumps in their messages.
    message = message.strip().splitlines()[0] if message.strip() else "no message"
    message = message if len(message) <= 600 else message[:600] + "..."
    if argv[1] == "convert":
        try:
            with open(argv[2]) as f:
                out = json.load(f)["output_dir"]
            with open(os.path.join(out, "result.json"), "w") as f:
                json.dump({"protocol": PROTOCOL, "error": message}, f)
        except Exception:
            pass
    print(json.dumps({"error": message}), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
