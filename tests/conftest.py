"""Shared fixtures: tiny ONNX graphs built by hand, the sample paths, and the slow/cuda markers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the slow whole-model suites")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or "slow" in (config.getoption("-m") or "")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def length_regulator(duration: str, features: str, out: str) -> list:
    """A duration TTS model's frames (hibari-tts's layout, hunt 34): each token's row of `features`
    [1, L, B] repeated over its duration (`duration` [1, L, 1], a float rounded to whole frames), as
    CumSum, Range over the total and GreaterOrEqual pick each frame's token: `out` [1, F, B], F following
    the values. Needs int64 initializers `zero` (0), `one` (1) and `last` ([-1])."""
    return [helper.make_node("Round", [duration], ["rounded"]), helper.make_node("Squeeze", ["rounded", "last"], ["df"]),
            helper.make_node("Cast", ["df"], ["dur"], to=TensorProto.INT64),
            helper.make_node("CumSum", ["dur", "one"], ["ends"]),
            helper.make_node("ReduceSum", ["dur"], ["frames"], keepdims=0),
            helper.make_node("Range", ["zero", "frames", "one"], ["t"]),
            helper.make_node("Unsqueeze", ["t", "last"], ["t2"]),
            helper.make_node("GreaterOrEqual", ["t2", "ends"], ["past"]),
            helper.make_node("Cast", ["past"], ["pi"], to=TensorProto.INT64),
            helper.make_node("ReduceSum", ["pi", "last"], ["token"], keepdims=0),  # each frame's token
            helper.make_node("Gather", [features, "token"], [out], axis=1)]


def make_model(nodes, inputs, outputs, initializers=(), opset=17, ir_version=None, domains=()):
    """A one-graph model; inputs/outputs are (name, elem_type, shape) triples, shape may hold str dims."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in dict(initializers).items()],
    )
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in domains)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="onnx-attr-tests")
    model.ir_version = ir_version or min(onnx.IR_VERSION, 8 if opset <= 17 else 10)
    return model


def assert_forward_unchanged(imported, dl, x: np.ndarray, x0: np.ndarray) -> torch.Tensor:
    """Every mode's forward of a DeepLift object's rewritten module is the plain module's, bit for
    bit (the reference pass run first for the DeepLift mode); returns the plain output."""
    rewrite, xs = dl.engine.rewrite, torch.from_numpy(x)
    plain = imported(xs)
    for mode in ("off", "reference", "deeplift"):
        if mode == "deeplift":
            rewrite.state.mode = "reference"
            rewrite.module(torch.from_numpy(x0))
        rewrite.state.mode = mode
        assert torch.equal(rewrite.module(xs), plain), mode
    rewrite.state.mode = "off"
    return plain


def ort_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """The oracle: onnxruntime on the CPU provider. On a CPU where its uint8 x int8 products saturate
    (AVX2 without VNNI), int8 weights go in as the same integers in uint8, which it computes exactly
    (`importing/saturation.py`; `test_saturation` checks that re-expression by hand)."""
    import onnxruntime as ort

    from onnx_attr.importing.saturation import unsaturated

    session = ort.InferenceSession(unsaturated(model)[0].SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


@pytest.fixture
def tiny_mlp():
    """x[batch,4] -> Gemm -> Relu -> Gemm -> Softmax, with fixed random weights."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="fc2", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    inits = {"w1": rng.standard_normal((5, 4)).astype(np.float32), "b1": rng.standard_normal(5).astype(np.float32),
             "w2": rng.standard_normal((3, 5)).astype(np.float32), "b2": rng.standard_normal(3).astype(np.float32)}
    return make_model(nodes, [("x", FLOAT, ["batch", 4])], [("probs", FLOAT, ["batch", 3])], inits)


@pytest.fixture(params=["checked", "sync-free"])
def hole_filling(request, monkeypatch):
    """Both ways the rules fill the multipliers' holes (x == x0): after a check (CPU), and
    unconditionally without reading back to the host (accelerators), the latter forced on CPU
    so that it is tested without a GPU."""
    from onnx_attr.deeplift.rules import paired

    monkeypatch.setattr(paired, "ALWAYS_SYNC_FREE", request.param == "sync-free")
    return request.param
