"""Writes a dense network for the batching benchmark: input FP32 [N, 30] -> 3 hidden layers of
WIDTH (ReLU) -> probabilities FP32 [N, 2] (softmax). Random weights, fixed seed: only the cost
matters. Needs numpy and onnx (scripts/setup.sh --test puts them in ./.venv).

Usage: dense_model.py OUT.onnx [WIDTH]
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

out, width = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1024
rng = np.random.default_rng(11)
sizes = [30, width, width, width, 2]
nodes, inits, prev = [], [], "input"
for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
    w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
    inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(np.zeros(b, np.float32), f"B{i}")]
    nodes += [helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}"])]
    prev = f"a{i}"
    if i < len(sizes) - 2:
        nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
        prev = f"r{i}"
nodes.append(helper.make_node("Softmax", [prev], ["probabilities"], axis=1))
graph = helper.make_graph(
    nodes, "dense", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 30])],
    [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])], initializer=inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelship-bench", ir_version=8)
onnx.checker.check_model(model)
onnx.save(model, out)
