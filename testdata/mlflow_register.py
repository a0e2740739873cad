"""Registers an ONNX file in an MLflow model registry through MLflow's own Python API, as a data
scientist would: used by the end-to-end tests of `modelship models import mlflow`.

usage: mlflow_register.py TRACKING_URI MODEL_NAME ONNX_FILE [ALIAS]
Prints the registered version number.
"""
import sys

import mlflow
import onnx

uri, name, path = sys.argv[1:4]
alias = sys.argv[4] if len(sys.argv) > 4 else None
mlflow.set_tracking_uri(uri)
with mlflow.start_run():
    mlflow.log_metric("auc", 0.931)
    mlflow.log_metric("accuracy", 0.88)
    info = mlflow.onnx.log_model(onnx.load(path), name="model", registered_model_name=name)
version = info.registered_model_version
client = mlflow.MlflowClient()
client.set_model_version_tag(name, str(version), "team", "risk")
client.update_model_version(name, str(version), description="gradient boosting, registered from the tests")
if alias:
    client.set_registered_model_alias(name, alias, str(version))
print(version)
