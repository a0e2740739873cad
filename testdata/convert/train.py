"""Trains the models the conversion tests serve, in the conversion environment's Python, and
writes, for each, 1,000 held-out rows and the original's answers on them (predict_proba for a
classifier, predict for a regressor): what the server must answer within the tolerance.

    python train.py OUT_DIR [--only lr]

Also writes the hostile and the disagreeing models the tests refuse. Deterministic (fixed seeds).
"""

import json
import os
import pickle
import sys

import joblib
import lightgbm
import numpy as np
import pandas as pd
import xgboost
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

out = sys.argv[1]
only = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--only" else None
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(7)
X = rng.normal(size=(3000, 4)) * [1.0, 2.0, 0.5, 10.0] + [0.0, 1.0, -1.0, 50.0]
y = ((X[:, 0] + 0.5 * X[:, 1] * X[:, 2] - 0.05 * (X[:, 3] - 50)) > 0).astype(int)
y3 = np.digitize(X[:, 0] + X[:, 2], [-1.5, 0.0])  # three classes
target = 3 * X[:, 0] - X[:, 1] ** 2 + 0.2 * X[:, 3]
# Held-out rows as float32 values: the server takes float32, so both sides see the same inputs.
held = (rng.normal(size=(1000, 4)) * [1.0, 2.0, 0.5, 10.0] + [0.0, 1.0, -1.0, 50.0]).astype(np.float32).astype(np.float64)


def write(name, model, rows=held, frame=None, dump=pickle.dump, ext="pkl", **kw):
    path = os.path.join(out, f"{name}.{ext}")
    if dump is joblib.dump:
        joblib.dump(model, path, **kw)
    elif dump is not None:
        with open(path, "wb") as f:
            dump(model, f)
    data = frame if frame is not None else rows
    if hasattr(model, "predict_proba"):
        answer = {"probabilities": np.asarray(model.predict_proba(data)).tolist(), "label": [str(v) for v in model.predict(data)]}
    else:
        answer = {"prediction": np.asarray(model.predict(data), dtype=float).ravel().tolist()}
    inputs = {"input": rows.tolist()} if frame is None else {c: frame[c].tolist() for c in frame.columns}
    with open(os.path.join(out, f"{name}.expected.json"), "w") as f:
        json.dump({"inputs": inputs, "answer": answer}, f)


def wanted(name):
    return only is None or only == name


if wanted("lr"):
    write("lr", make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y))
if wanted("rf"):
    write("rf", RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0).fit(X, y3), dump=joblib.dump, ext="joblib", compress=3)
if wanted("hgb"):
    write("hgb", HistGradientBoostingClassifier(max_iter=40, random_state=0).fit(X, y))
if wanted("ct"):
    cities = np.array(["kathmandu", "pokhara", "lalitpur", "biratnagar"])
    df = pd.DataFrame({"amount": X[:, 3], "age": X[:, 1] * 10 + 40, "city": rng.choice(cities, len(X)), "channel": rng.choice(["web", "app"], len(X))})
    yc = ((df["amount"] > 50).astype(int) ^ (df["city"] == "pokhara").astype(int)).to_numpy()
    ct = ColumnTransformer([("num", StandardScaler(), ["amount", "age"]), ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "channel"])])
    model = Pipeline([("prep", ct), ("clf", LogisticRegression())]).fit(df, yc)
    held_df = pd.DataFrame({
        "amount": held[:, 3], "age": (held[:, 1] * 10 + 40).astype(np.float32).astype(np.float64),
        "city": rng.choice(cities, len(held)), "channel": rng.choice(["web", "app"], len(held)),
    })
    write("ct", model, frame=held_df)
if wanted("xgb"):
    xc = xgboost.XGBClassifier(n_estimators=40, max_depth=4, random_state=0).fit(X, y)
    write("xgb", xc)
    xc.get_booster().save_model(os.path.join(out, "xgb_booster.json"))
    xc.get_booster().save_model(os.path.join(out, "xgb_booster.ubj"))
    write("xgb_booster", xc, dump=None)  # the same answers: the booster is the classifier's
    xr = xgboost.XGBRegressor(n_estimators=40, max_depth=4, random_state=0).fit(X, target)
    write("xgb_reg", xr)
if wanted("lgbm"):
    lc = lightgbm.LGBMClassifier(n_estimators=40, num_leaves=15, random_state=0, verbose=-1).fit(X, y3)
    write("lgbm", lc, dump=joblib.dump, ext="joblib")
    lc.booster_.save_model(os.path.join(out, "lgbm_booster.txt"))
    write("lgbm_booster", lc, dump=None)
    lr_ = lightgbm.LGBMRegressor(n_estimators=40, num_leaves=15, random_state=0, verbose=-1).fit(X, target)
    write("lgbm_reg", lr_)
if only == "evil":
    # A pickle that names scikit-learn (so it passes the inspection) and, when loaded, writes
    # files outside the sandbox's scratch directory (EVIL_FILES, comma-separated: some where the
    # sandbox shows nothing, one in a directory it shows read-only), connects to a listener on
    # loopback (EVIL_PORT), and reads a secret (EVIL_SECRET) into its error message.
    targets, port, secret = os.environ["EVIL_FILES"].split(","), int(os.environ["EVIL_PORT"]), os.environ["EVIL_SECRET"]
    code = (
        "import socket\n"
        f"for target in {targets!r}:\n"
        "    try:\n        open(target, 'w').write('written by the pickle')\n    except Exception as e:\n        print('write refused:', e)\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'hello from the pickle')\nexcept Exception as e:\n    print('connect refused:', e)\n"
        f"try:\n    stolen = open({secret!r}).read()\nexcept Exception:\n    stolen = None\n"
        "if stolen:\n    raise RuntimeError('stolen: ' + stolen)\n"
    )

    class Payload:
        def __reduce__(self):
            return (exec, (code,))

    with open(os.path.join(out, "evil.pkl"), "wb") as f:
        pickle.dump([StandardScaler(), Payload()], f)
    with open(os.path.join(out, "evil_plain.pkl"), "wb") as f:
        pickle.dump(Payload(), f)
