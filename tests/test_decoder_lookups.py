"""An unrolled greedy decoder looks up tokens its own ArgMax (or TopK) chose beside the input's ids
(g2p-id's tiny-pron: 17 such lookups beside one of the input's, hunt 33). Those choices are positions
the model picked, not the input's ids: reading them as lookups of the input added per-token scores of
[1, 28], [1, 2], [1, 3] ... (DeepLift: exit 3) and named the wrong lookup in IG's error. Oracle: which
lookups are taps, by construction; the CLI's run ending in a clean refusal and its fallback."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model
from onnx_attr.app.cli import main
from onnx_attr.deeplift.taps import embedding_taps


def _decoder(choice: str):
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Gather", ["enc_table", "text"], ["emb"]),
             helper.make_node("ReduceMean", ["emb"], ["hid"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["hid", "w"], ["logits"])]
    if choice == "argmax":
        nodes.append(helper.make_node("ArgMax", ["logits"], ["token"], axis=1, keepdims=1))
    else:  # TopK(k=1)'s indices, the values thrown away
        nodes.append(helper.make_node("TopK", ["logits", "k"], ["best", "token"], axis=1))
    nodes += [helper.make_node("Concat", ["start", "token"], ["steps"], axis=1),
              helper.make_node("Gather", ["dec_table", "steps"], ["demb"]),
              helper.make_node("ReduceMean", ["demb"], ["dhid"], axes=[1], keepdims=0),
              helper.make_node("Add", ["dhid", "hid"], ["mix"]), helper.make_node("Tanh", ["mix"], ["t"]),
              helper.make_node("MatMul", ["t", "w2"], ["scores"])]
    inits = {"enc_table": rng.normal(size=(12, 6)).astype(np.float32) * 3,
             "dec_table": rng.normal(size=(9, 6)).astype(np.float32), "w": rng.normal(size=(6, 9)).astype(np.float32),
             "w2": rng.normal(size=(6, 4)).astype(np.float32), "start": np.array([[1]], np.int64),
             "k": np.array([1], np.int64)}
    return make_model(nodes, [("text", TensorProto.INT64, [1, 5])], [("scores", FLOAT, [1, 4])], initializers=inits,
                      opset=13)


@pytest.mark.parametrize("choice", ["argmax", "topk"])
def test_a_lookup_of_the_models_own_choice_is_not_one_of_the_input_ids(tmp_path, choice):
    proto = _decoder(choice)
    model = onnx_attr.load(proto, strip_final_activation=False)
    taps = embedding_taps(model.module, model.inputs)
    assert len(taps) == 1 and set(taps.values()) == {"text"}  # the encoder's lookup alone
    path, inputs, out = tmp_path / "decoder.onnx", tmp_path / "in.npz", tmp_path / "out"
    onnx.save(proto, path)
    ids = np.array([[3, 5, 2, 7, 4]], np.int64)
    np.savez(inputs, text=ids)
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out)]) == 0  # exit 3 before
    report = json.loads((out / "report.json").read_text())
    assert np.load(out / "attributions.npz")["text"].shape == ids.shape
    if choice == "argmax":  # DeepLift names the jump it cannot carry; the CLI falls back
        assert "ArgMax" in report["fallback_reason"]
    ig = onnx_attr.IntegratedGradients(model).attribute(ids, target=0, n_steps=8)
    assert np.asarray(ig).shape == ids.shape
