"""Registers a model in an MLflow model registry through MLflow's own Python API, as a data
scientist would: used by the end-to-end tests of `modelship models import mlflow`. An ONNX file
is logged with the onnx flavour; a pickled scikit-learn model (.pkl, the tests' own) with the
sklearn flavour, as `mlflow.sklearn.log_model` writes it: model.pkl (cloudpickle), or
model.skops (MLflow's default) for `skops:FILE.pkl`.

usage: mlflow_register.py TRACKING_URI MODEL_NAME MODEL_FILE [ALIAS]
Prints the registered version number.
"""
import pickle
import sys

import mlflow
import onnx

uri, name, path = sys.argv[1:4]
alias = sys.argv[4] if len(sys.argv) > 4 else None
mlflow.set_tracking_uri(uri)
with mlflow.start_run():
    mlflow.log_metric("auc", 0.931)
    mlflow.log_metric("accuracy", 0.88)
    if path.endswith(".pkl"):
        # "skops:FILE" logs it in MLflow's default format (skops), a plain FILE as model.pkl.
        serialization = "skops" if path.startswith("skops:") else "cloudpickle"
        with open(path.removeprefix("skops:"), "rb") as f:
            model = pickle.load(f)
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name, serialization_format=serialization)
    else:
        info = mlflow.onnx.log_model(onnx.load(path), name="model", registered_model_name=name)
version = info.registered_model_version
client = mlflow.MlflowClient()
client.set_model_version_tag(name, str(version), "team", "risk")
client.update_model_version(name, str(version), description="gradient boosting, registered from the tests")
if alias:
    client.set_registered_model_alias(name, alias, str(version))
print(version)
