"""`verify` without inputs on a model with a free height or width: the random sample grows its free
non-batch dims until both runtimes can run it (a text recogniser [N, 3, 48, W] cannot at W = 2)."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_attr
from onnx_attr.errors import ForwardError, ReferenceRuntimeError


def _recogniser(width="W"):
    """[N, 1, 8, W] -> Conv 3x5 (no padding) -> Relu -> MaxPool 2x4 -> [N, 4, 3, (W - 4) / 4]."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 4], strides=[2, 4])]
    graph = helper.make_graph(nodes, "rec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 3, "Wo"])],
                              [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 5)).astype(np.float32), "k")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_free_width_too_small_at_two_is_sampled_larger():
    model = onnx_attr.load(_recogniser(), strip_final_activation=False)
    with pytest.raises((ForwardError, ReferenceRuntimeError)):  # what the sample of old met: W = 2
        model.verify(np.random.default_rng(0).standard_normal((2, 1, 8, 2)).astype(np.float32))
    report = model.verify()
    assert report.passed and "free non-batch dims 32" in report.inputs
    assert report.outputs[0].shape == [2, 4, 3, 7]  # the batch stays at 2, W = 32


def test_a_model_with_fixed_dims_keeps_its_error():
    """Nothing to grow: the error is the model's and comes back at once."""
    model = onnx_attr.load(_recogniser(width=2), strip_final_activation=False)
    with pytest.raises((ForwardError, ReferenceRuntimeError)):
        model.verify()


def test_a_batch_symbol_that_runs_only_at_one_is_sampled_at_one():
    """speechmos's AECMOS declares [batch_size, 3, frames, 160] but its GRU state h0 [4, 1, 96]
    fixes the batch at 1; here a Reshape to [1, 3] does the same. Batch 2 runs in neither runtime,
    so the sample is retried at batch 1 (and says so); a model that runs at 2 still gets 2."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Reshape", ["x", "one_row"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
    graph = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(np.array([1, 3], np.int64), "one_row"),
                               numpy_helper.from_array(rng.standard_normal((3, 2)).astype(np.float32), "w")])
    model = onnx_attr.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
                           strip_final_activation=False)
    report = model.verify()
    assert report.passed and "batch 1" in report.inputs and report.outputs[0].shape == [1, 2]
    assert "batch 1" not in onnx_attr.load(_recogniser(), strip_final_activation=False).verify().inputs


def _line_reader(reshape_to=None):
    """[N, 1, 4, W] -> MaxPool 1x2 -> ReduceMean over the height -> [N, 1, W/2] -> Transpose -> [T, N, 1]
    -> CumSum backwards over T: a recurrence over the time steps, which one step alone cannot check."""
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[1, 2], strides=[1, 2]),
             helper.make_node("ReduceMean", ["p"], ["m"], axes=[2], keepdims=0),
             helper.make_node("Transpose", ["m"], ["t"], perm=[2, 0, 1]),
             helper.make_node("CumSum", ["t", "zero"], ["y"], reverse=1)]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero")]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "N", 1])
    if reshape_to is not None:  # a size baked in: only W = 2 runs
        nodes.append(helper.make_node("Reshape", ["y", "shape"], ["z"]))
        inits.append(numpy_helper.from_array(np.array(reshape_to, np.int64), "shape"))
        out = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", "T", 1])
    graph = helper.make_graph(nodes, "line", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, "W"])],
                              [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_free_output_axis_one_long_is_sampled_larger(monkeypatch):
    """hunt 36: a line reader's random sample at W = 2 ran one time step ([1, 2, 1]), so its recurrence
    went unchecked. The next size is taken where it runs: T = 16. Oracle: a CumSum imported backwards
    passes at T = 1 (one step has no direction) and fails at T = 16."""
    model = onnx_attr.load(_line_reader(), strip_final_activation=False)
    report = model.verify()
    assert report.passed and report.outputs[0].shape == [16, 2, 1]
    assert "free non-batch dims 32" in report.inputs
    cumsums = [m for m in model.module.modules() if "cumsum" in type(m).__name__.lower()]
    assert len(cumsums) == 1
    monkeypatch.setattr(cumsums[0], "forward", lambda x, *rest: x.cumsum(0))  # `reverse` lost in the import
    assert not model.verify().passed
    assert model.verify(np.ones((2, 1, 4, 2), np.float32)).passed  # one step: the error cannot show


def test_a_larger_size_that_does_not_run_keeps_the_one_that_did():
    model = onnx_attr.load(_line_reader(reshape_to=[2, 1, 1]), strip_final_activation=False)
    report = model.verify()
    assert report.passed and report.outputs[0].shape == [2, 1, 1] and "free non-batch dims 2" in report.inputs


def test_a_file_onnxruntime_will_not_load_is_said_at_once(monkeypatch):
    """hunt 37: an fp16 converter's output onnxruntime refuses at load (a Cast's declared type is not the
    type it makes) imports and runs here; the sample went on growing until our own forward failed at a
    size the model cannot take, and blamed the shapes. Now onnxruntime's refusal is the answer, and no
    other size is tried."""
    from onnx_attr.importing import verify as verify_module

    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT),
                               helper.make_node("Relu", ["h"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T"])],
                              value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT16, ["N", "T"])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model = onnx_attr.load(proto)
    sizes = []
    sample = verify_module.sample_inputs
    monkeypatch.setattr(verify_module, "sample_inputs", lambda *a, **k: sizes.append(k["symbolic_size"]) or sample(*a, **k))
    with pytest.raises(ReferenceRuntimeError, match="onnxruntime could not load the model") as raised:
        model.verify()
    assert "random sample" not in str(raised.value) and sizes == [2]


def test_free_dims_a_weight_fixes_are_sampled_at_its_size():
    """hunt 37: a Whisper-like encoder's mel input declared [batch, n_frames, 3000] takes exactly the 80
    channels of its first Conv's weight; no guessed size (2, 32, ...) ran, and verify failed. A free dim
    that a constant weight fixes (a Conv's input channels, a MatMul's or Gemm's inner size, through a
    Transpose and a Cast) is sampled at that size; onnxruntime then runs the sample (verify passes)."""
    from onnx_attr.importing.inputs import sampling_specs

    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["mel", "k"], ["c"], pads=[1, 1]),  # mel [N, F, T]: F must be 5
             helper.make_node("ReduceMean", ["c"], ["m"], axes=[2], keepdims=0),
             helper.make_node("Transpose", ["seq"], ["st"], perm=[0, 2, 1]),  # seq [N, D, L] -> [N, L, D]
             helper.make_node("Cast", ["st"], ["sc"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["sc", "w"], ["p"]),  # D must be 7
             helper.make_node("ReduceMean", ["p"], ["q"], axes=[1], keepdims=0),
             helper.make_node("Gemm", ["row", "g"], ["r"], transB=1),  # row [N, K]: K must be 3
             helper.make_node("Concat", ["m", "q", "r"], ["y"], axis=1)]
    graph = helper.make_graph(
        nodes, "fixed",
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["N", "F", "T"]),
         helper.make_tensor_value_info("seq", TensorProto.FLOAT, ["N", "D", "L"]),
         helper.make_tensor_value_info("row", TensorProto.FLOAT, ["N", "K"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])],
        [numpy_helper.from_array(rng.standard_normal((4, 5, 3)).astype(np.float32), "k"),
         numpy_helper.from_array(rng.standard_normal((7, 4)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "g")])
    model = onnx_attr.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    shapes = {s.name: s.shape for s in sampling_specs(model)}
    assert shapes == {"mel": ("N", 5, "T"), "seq": ("N", 7, "L"), "row": ("N", 3)}
    said = {d["name"]: d.get("fixed_by_weights") for d in model.summary()["inputs"]}  # what `inspect` shows
    assert said == {"mel": {"1": 5}, "seq": {"1": 7}, "row": {"1": 3}}
    report = model.verify()
    assert report.passed and "free non-batch dims 2" in report.inputs
