"""The com.microsoft ops onnxruntime's transformer optimizer and quantizer write: each against
onnxruntime (CPU provider), at the magnitudes real models produce, and each through DeepLift,
whose rewrite splices the op's steps (ordinary ONNX ops) into the graph: the attributions sum
to f(x) - f(x0). Other custom domains stay refused by name."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
import torch
import onnx
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model, ort_run
from onnx_attr.errors import UnsupportedOpError

RNG = np.random.default_rng(1806)
MS = ("com.microsoft", 1)


def _model(nodes, inputs, output_shape, inits=None, opset=17):
    flat = helper.make_node("Flatten", ["y"], ["flat"], axis=1)
    return make_model(nodes + [flat], inputs, [("flat", FLOAT, [output_shape[0], int(np.prod(output_shape[1:]))])],
                      initializers=inits or {}, opset=opset, domains=[MS])


def _hidden(batch=2, seq=5, width=16, scale=30.0):
    return (RNG.standard_normal((batch, seq, width)) * scale).astype(np.float32)


def _image():
    return (RNG.random((2, 3, 9, 8)) * 255).astype(np.float32)


CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


@case
def gelu():
    node = helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")
    return _model([node], [("x", FLOAT, [2, 5, 16])], [2, 5, 16]), {"x": _hidden(scale=3.0)}, 1e-5


@case
def bias_gelu():
    node = helper.make_node("BiasGelu", ["x", "b"], ["y"], domain="com.microsoft")
    b = RNG.standard_normal(16).astype(np.float32)
    return _model([node], [("x", FLOAT, [2, 5, 16])], [2, 5, 16], {"b": b}), {"x": _hidden(scale=3.0)}, 1e-5


@case
def fast_gelu():
    node = helper.make_node("FastGelu", ["x", "b"], ["y"], domain="com.microsoft")
    b = RNG.standard_normal(16).astype(np.float32)
    return _model([node], [("x", FLOAT, [2, 5, 16])], [2, 5, 16], {"b": b}), {"x": _hidden(scale=3.0)}, 1e-5


@case
def quick_gelu():
    node = helper.make_node("QuickGelu", ["x"], ["y"], domain="com.microsoft", alpha=1.702)
    return _model([node], [("x", FLOAT, [2, 5, 16])], [2, 5, 16]), {"x": _hidden(scale=3.0)}, 1e-5


def _fused_conv(activation, params=(), with_z=False, pads=None):
    w = (RNG.standard_normal((4, 3, 3, 3)) * 0.05).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    attrs = {"activation": activation, "strides": [2, 2]}
    attrs.update({"pads": pads} if pads else {"auto_pad": "SAME_UPPER"})
    if params:
        attrs["activation_params"] = list(params)
    inputs = ["x", "w", "b"] + (["z"] if with_z else [])
    node = helper.make_node("FusedConv", inputs, ["y"], domain="com.microsoft", **attrs)
    declared = [("x", FLOAT, [2, 3, 9, 8])] + ([("z", FLOAT, [2, 4, 5, 4])] if with_z else [])
    feeds = {"x": _image()}
    if with_z:
        feeds["z"] = (RNG.standard_normal((2, 4, 5, 4)) * 10).astype(np.float32)
    return _model([node], declared, [2, 4, 5, 4], {"w": w, "b": b}), feeds, 1e-4


@case
def fused_conv_relu():
    return _fused_conv("Relu")


@case
def fused_conv_leaky_relu_with_sum():
    return _fused_conv("LeakyRelu", [0.1], with_z=True, pads=[1, 1, 1, 0])


@case
def fused_conv_clip():
    return _fused_conv("Clip", [0.0, 6.0], pads=[1, 1, 1, 0])


@case
def fused_conv_sigmoid():
    return _fused_conv("Sigmoid", pads=[1, 1, 1, 0])


@case
def fused_matmul():
    node = helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft", alpha=0.125, transB=1)
    w = RNG.standard_normal((8, 16)).astype(np.float32)
    return _model([node], [("x", FLOAT, [2, 5, 16])], [2, 5, 8], {"w": w}), {"x": _hidden()}, 1e-4


@case
def fused_matmul_of_two_inputs():
    node = helper.make_node("FusedMatMul", ["x", "k"], ["y"], domain="com.microsoft", alpha=0.25, transB=1)
    return (_model([node], [("x", FLOAT, [2, 5, 16]), ("k", FLOAT, [2, 5, 16])], [2, 5, 5]),
            {"x": _hidden(scale=2.0), "k": _hidden(scale=2.0)}, 1e-4)


@case
def skip_layer_normalization():
    node = helper.make_node("SkipLayerNormalization", ["x", "s", "g", "beta", "bias"], ["y"], domain="com.microsoft",
                            epsilon=1e-5)
    inits = {"g": RNG.random(16).astype(np.float32) + 0.5, "beta": RNG.standard_normal(16).astype(np.float32),
             "bias": RNG.standard_normal(16).astype(np.float32)}
    return (_model([node], [("x", FLOAT, [2, 5, 16]), ("s", FLOAT, [2, 5, 16])], [2, 5, 16], inits),
            {"x": _hidden(), "s": _hidden()}, 1e-4)


def _attention(mask_rank=None, unidirectional=0):
    w = (RNG.standard_normal((16, 48)) * 0.2).astype(np.float32)
    b = (RNG.standard_normal(48) * 0.1).astype(np.float32)
    inputs = ["x", "w", "b"] + (["m"] if mask_rank else [])
    node = helper.make_node("Attention", inputs, ["y"], domain="com.microsoft", num_heads=4,
                            unidirectional=unidirectional)
    declared = [("x", FLOAT, [2, 5, 16])]
    feeds = {"x": _hidden(scale=3.0)}
    if mask_rank == 2:
        declared.append(("m", TensorProto.INT32, [2, 5]))
        feeds["m"] = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
    elif mask_rank == 1:
        declared.append(("m", TensorProto.INT32, [2]))
        feeds["m"] = np.array([5, 3], np.int32)
    return _model([node], declared, [2, 5, 16], {"w": w, "b": b}), feeds, 1e-4


@case
def attention():
    return _attention()


@case
def attention_with_padding_mask():
    return _attention(mask_rank=2)


@case
def attention_with_lengths_causal():
    return _attention(mask_rank=1, unidirectional=1)


@case
def multi_head_attention():
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v", "b", "m"], ["y"], domain="com.microsoft",
                            num_heads=2)
    b = (RNG.standard_normal(48) * 0.1).astype(np.float32)
    declared = [("q", FLOAT, [2, 5, 16]), ("k", FLOAT, [2, 7, 16]), ("v", FLOAT, [2, 7, 16]),
                ("m", TensorProto.INT32, [2, 7])]
    feeds = {"q": _hidden(scale=2.0), "k": _hidden(seq=7, scale=2.0), "v": _hidden(seq=7),
             "m": np.array([[1] * 7, [1] * 4 + [0] * 3], np.int32)}
    return _model([node], declared, [2, 5, 16], {"b": b}), feeds, 1e-4


def _rms(op, inputs, declared, inits, opset, domain="", **attrs):
    node = helper.make_node(op, inputs, ["y"], domain=domain, **attrs)
    return _model([node], declared, [2, 5, 16], inits, opset=opset)


@case
def simplified_layer_normalization():
    """onnxruntime's RMS norm of the ai.onnx domain, as its optimizer writes it into an opset-14 graph
    (the ONNX checker has no schema for it)."""
    inits = {"g": RNG.random(16).astype(np.float32) + 0.5}
    return _rms("SimplifiedLayerNormalization", ["x", "g"], [("x", FLOAT, [2, 5, 16])], inits, 14,
                epsilon=1e-6), {"x": _hidden()}, 1e-5


@case
def layer_normalization_below_opset_17():
    """onnxruntime's own LayerNormalization of the ai.onnx domain, written by its optimizer at opset 14."""
    inits = {"g": RNG.random(16).astype(np.float32) + 0.5, "beta": RNG.standard_normal(16).astype(np.float32)}
    return _rms("LayerNormalization", ["x", "g", "beta"], [("x", FLOAT, [2, 5, 16])], inits, 14,
                axis=-1, epsilon=1e-12), {"x": _hidden()}, 1e-4


@case
def skip_simplified_layer_normalization():
    inits = {"g": RNG.random(16).astype(np.float32) + 0.5, "bias": RNG.standard_normal(16).astype(np.float32)}
    return _rms("SkipSimplifiedLayerNormalization", ["x", "s", "g", "bias"],
                [("x", FLOAT, [2, 5, 16]), ("s", FLOAT, [2, 5, 16])], inits, 17, domain="com.microsoft",
                epsilon=1e-6), {"x": _hidden(), "s": _hidden()}, 1e-5


@case
def fused_gemm_leaky_relu():
    node = helper.make_node("FusedGemm", ["x", "w", "b"], ["y"], domain="com.microsoft", transB=1, alpha=0.5,
                            activation="LeakyRelu", activation_alpha=0.2)
    inits = {"w": (RNG.standard_normal((8, 16)) * 0.3).astype(np.float32), "b": RNG.standard_normal(8).astype(np.float32)}
    return (make_model([node], [("x", FLOAT, [2, 16])], [("y", FLOAT, [2, 8])], initializers=inits, domains=[MS]),
            {"x": _hidden(seq=1).reshape(2, 16)}, 1e-5)


def _int8_weight():
    w = RNG.integers(-127, 128, (16, 8)).astype(np.int8)
    return {"w": w, "ws": np.array(0.004, np.float32), "wz": np.array(0, np.int8),
            "bias": RNG.standard_normal(8).astype(np.float32)}


@case
def matmul_integer_to_float():
    """onnxruntime's fusion of MatMulInteger → Cast → Mul (+ bias) after its dynamic quantizer."""
    quantize = helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "qs", "qz"])
    node = helper.make_node("MatMulIntegerToFloat", ["q", "w", "qs", "ws", "qz", "wz", "bias"], ["y"],
                            domain="com.microsoft")
    return _model([quantize, node], [("x", FLOAT, [2, 5, 16])], [2, 5, 8], _int8_weight()), {"x": _hidden()}, 1e-5


@case
def dynamic_quantize_matmul():
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "w", "ws", "wz", "bias"], ["y"], domain="com.microsoft")
    return _model([node], [("x", FLOAT, [2, 5, 16])], [2, 5, 8], _int8_weight()), {"x": _hidden()}, 1e-5


@case
def quantized_attention():
    """onnxruntime's dynamic quantizer on Attention: DynamicQuantizeLinear, then QAttention with the 8-bit
    packed weight, a float bias and 1-D key lengths."""
    quantize = helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "qs", "qz"])
    node = helper.make_node("QAttention", ["q", "w", "b", "qs", "ws", "m", "qz", "wz"], ["y"], domain="com.microsoft",
                            num_heads=4)
    inits = {"w": RNG.integers(-127, 128, (16, 48)).astype(np.int8), "ws": np.array(0.003, np.float32),
             "wz": np.array(0, np.int8), "b": (RNG.standard_normal(48) * 0.1).astype(np.float32)}
    declared = [("x", FLOAT, [2, 5, 16]), ("m", TensorProto.INT32, [2])]
    return (_model([quantize, node], declared, [2, 5, 16], inits),
            {"x": _hidden(scale=3.0), "m": np.array([5, 3], np.int32)}, 1e-4)


@case
def quantized_attention_without_mask():
    """As onnxruntime's quantizer writes a mask-less one: the mask input skipped (an empty name) between
    given ones."""
    quantize = helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "qs", "qz"])
    node = helper.make_node("QAttention", ["q", "w", "b", "qs", "ws", "", "qz", "wz"], ["y"], domain="com.microsoft",
                            num_heads=4)
    inits = {"w": RNG.integers(-127, 128, (16, 48)).astype(np.int8), "ws": np.array(0.003, np.float32),
             "wz": np.array(0, np.int8), "b": (RNG.standard_normal(48) * 0.1).astype(np.float32)}
    return _model([quantize, node], [("x", FLOAT, [2, 5, 16])], [2, 5, 16], inits), {"x": _hidden(scale=3.0)}, 1e-4


#: rewritten nodes per case where not 1: an RMS norm is Mul(x, x), Sqrt→Reciprocal (one fused chain) and x·(1/rms)
REWRITTEN = {"fused_matmul": 0, "quantized_attention": 2, "quantized_attention_without_mask": 2,
             "simplified_layer_normalization": 3, "skip_simplified_layer_normalization": 3}


@pytest.mark.parametrize("name", CASES)
def test_matches_onnxruntime(name):
    proto, feeds, rtol = CASES[name]()
    expected = ort_run(proto, feeds)[0]
    got = onnx_attr.load(proto, strip_final_activation=False).run(feeds)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * float(np.abs(expected).max()))


@pytest.mark.parametrize("name", CASES)
def test_deeplift_is_complete_through_the_expanded_steps(name):
    proto, feeds, _ = CASES[name]()
    model = onnx_attr.load(proto, strip_final_activation=False)
    floats = [spec.name for spec in model.inputs if np.issubdtype(feeds[spec.name].dtype, np.floating)]
    xs = tuple(torch.from_numpy(feeds[n]) for n in floats)
    refs = tuple(torch.from_numpy(np.asarray(RNG.standard_normal(x.shape) * float(x.std()) * 0.5, np.float32))
                 for x in xs)
    extra = tuple(torch.from_numpy(feeds[spec.name]) for spec in model.inputs if spec.name not in floats)
    dl = onnx_attr.DeepLift(model)
    target = 7
    attributions = dl.attribute(xs if len(xs) > 1 else xs[0], baselines=refs if len(refs) > 1 else refs[0],
                                target=target, additional_forward_args=extra or None)
    attributions = attributions if isinstance(attributions, tuple) else (attributions,)
    with torch.no_grad():
        y = model(*xs, *extra)[:, target]
        y0 = model(*refs, *extra)[:, target]
    total = sum(a.reshape(a.shape[0], -1).sum(1) for a in attributions)
    scale = float((y.abs() + y0.abs()).max())
    assert scale > 0
    torch.testing.assert_close(total, y - y0, rtol=0, atol=2e-5 * scale + 1e-6)
    # fused_matmul has one constant operand: a linear map, nothing to rewrite
    assert dl.last_report["rewritten_nodes"] == REWRITTEN.get(name, 1)
    assert not dl.last_report["gradient_fallback_nodes"]


def test_other_custom_domains_stay_refused_by_name():
    node = helper.make_node("Gelu", ["x"], ["y"], domain="com.example", name="odd")
    proto = make_model([node], [("x", FLOAT, [2])], [("y", FLOAT, [2])], domains=[("com.example", 1)])
    with pytest.raises(UnsupportedOpError, match="(?s)Gelu.*com.example"):
        onnx_attr.load(proto)


def test_a_graph_saved_at_ort_enable_all_is_refused_with_the_level_that_imports(tmp_path):
    """onnxruntime's ORT_ENABLE_ALL saves convolutions in its NCHWc blocked layout (weights reordered
    for the saving machine's vector width): the refusal names the ops and says which level to save
    at instead; that level's file (FusedConv) imports and matches onnxruntime."""
    import onnxruntime as ort

    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    proto = make_model(nodes, [("x", FLOAT, [1, 16, 12, 12])], [("y", FLOAT, [1, 16, 12, 12])],
                       {"w": (RNG.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32),
                        "b": RNG.standard_normal(16).astype(np.float32),
                        "w2": (RNG.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32)}, opset=13)
    src = tmp_path / "plain.onnx"
    src.write_bytes(proto.SerializeToString())
    x = RNG.standard_normal((1, 16, 12, 12)).astype(np.float32) * 50
    for level, name in ((ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "extended.onnx"),
                        (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "all.onnx")):
        options = ort.SessionOptions()
        options.graph_optimization_level, options.optimized_model_filepath = level, str(tmp_path / name)
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    extended = onnx_attr.load(str(tmp_path / "extended.onnx"))
    assert any(n.op_type == "FusedConv" for n in onnx.load(str(tmp_path / "extended.onnx")).graph.node)
    assert any("split 1 FusedConv" in note for note in extended.notes)  # its Relu a node of its own again
    assert extended.verify(x).passed
    saved = onnx.load(str(tmp_path / "all.onnx"))
    if not any(n.domain == "com.microsoft.nchwc" for n in saved.graph.node):  # no blocked layout on this CPU
        saved.graph.node.insert(0, helper.make_node("ReorderInput", ["x"], ["x_nchwc"], domain="com.microsoft.nchwc"))
    with pytest.raises(UnsupportedOpError, match="(?s)com.microsoft.nchwc.*ORT_ENABLE_ALL.*ORT_ENABLE_EXTENDED"):
        onnx_attr.load(saved)


def _quantized_tables(inits: dict, names: Sequence[str]) -> list[str]:
    """The named tables as uint8 with a per-tensor scale and zero point (as onnxruntime's quantizer
    stores QEmbedLayerNormalization's), in place; their input names, tables then scales then zero points."""
    for name in names:
        table = inits.pop(name)
        scale = np.float32(np.abs(table).max() / 127)
        inits[f"{name}_q"] = np.clip(np.round(table / scale) + 128, 0, 255).astype(np.uint8)
        inits[f"{name}_s"], inits[f"{name}_z"] = np.array(scale, np.float32), np.array(128, np.uint8)
    return [f"{n}_q" for n in names], [f"{n}_s" for n in names], [f"{n}_z" for n in names]


def _bert_embedding(with_mask=True, quantized=False):
    """EmbedLayerNormalization (word + position + segment lookups, LayerNorm, the mask index) into
    Attention reading that index, then a pooled classifier: onnxruntime's optimized BERT, in small
    (`quantized`: its dynamic quantizer's QEmbedLayerNormalization over 8-bit tables)."""
    vocab, hidden = 30, 16
    inits = {"we": (RNG.standard_normal((vocab, hidden)) * 2).astype(np.float32),
             "pe": RNG.standard_normal((12, hidden)).astype(np.float32),
             "se": RNG.standard_normal((2, hidden)).astype(np.float32),
             "g": RNG.random(hidden).astype(np.float32) + 0.5, "beta": RNG.standard_normal(hidden).astype(np.float32),
             "w": (RNG.standard_normal((hidden, 3 * hidden)) * 0.3).astype(np.float32),
             "b": (RNG.standard_normal(3 * hidden) * 0.1).astype(np.float32),
             "wc": RNG.standard_normal((hidden, 3)).astype(np.float32)}
    tables = ["we", "pe", "se", "g", "beta"]
    if quantized:
        values, scales, zeros = _quantized_tables(inits, tables)
        embed = helper.make_node("QEmbedLayerNormalization", ["ids", "seg", *values, "mask" if with_mask else "",
                                                              *scales, *zeros], ["h", "mask_index"],
                                 domain="com.microsoft", epsilon=1e-12, name="embeddings")
    else:
        embed = helper.make_node("EmbedLayerNormalization", ["ids", "seg", *tables] + (["mask"] if with_mask else []),
                                 ["h", "mask_index"], domain="com.microsoft", epsilon=1e-12, name="embeddings")
    nodes = [embed,
             helper.make_node("Attention", ["h", "w", "b", "mask_index"], ["a"], domain="com.microsoft", num_heads=4),
             helper.make_node("ReduceMean", ["a"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "wc"], ["logits"])]
    declared = [("ids", TensorProto.INT32, ["batch", "seq"]), ("seg", TensorProto.INT32, ["batch", "seq"])] + \
        ([("mask", TensorProto.INT32, ["batch", "seq"])] if with_mask else [])
    proto = make_model(nodes, declared, [("logits", FLOAT, ["batch", 3])], initializers=inits, opset=14, domains=[MS])
    ids = RNG.integers(1, vocab, (2, 6)).astype(np.int32)
    feeds = {"ids": ids, "seg": np.array([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1]], np.int32)}
    if with_mask:
        feeds["mask"] = np.array([[1] * 6, [1, 1, 1, 1, 0, 0]], np.int32)
    return proto, feeds


@pytest.mark.parametrize("with_mask,quantized", [(True, False), (False, False), (True, True)])
def test_embed_layer_normalization_matches_onnxruntime(with_mask, quantized):
    proto, feeds = _bert_embedding(with_mask, quantized)
    model = onnx_attr.load(proto, strip_final_activation=False)
    assert any("EmbedLayerNormalization" in note for note in model.notes)
    np.testing.assert_allclose(model.run(feeds)[0].numpy(), ort_run(proto, feeds)[0], rtol=1e-4, atol=1e-4)
    assert model.verify(feeds).passed


@pytest.mark.parametrize("quantized", [False, True])
def test_embed_layer_normalization_attributes_token_ids_at_the_lookup(quantized):
    """Token ids are attributed at the written-out word lookup (its dequantized rows for 8-bit tables), by
    DeepLift (complete against the model's own outputs, mask and segments held) and by IG (which cuts the
    graph at that tensor)."""
    proto, feeds = _bert_embedding(quantized=quantized)
    model = onnx_attr.load(proto, strip_final_activation=False)
    ids = torch.from_numpy(feeds["ids"])
    held = (torch.from_numpy(feeds["seg"]), torch.from_numpy(feeds["mask"]))
    baseline = torch.zeros_like(ids)  # the [PAD] id
    dl = onnx_attr.DeepLift(model)
    attributions, delta = dl.attribute(ids, baselines=baseline, target=1, additional_forward_args=held,
                                       return_convergence_delta=True)
    assert attributions.shape == ids.shape
    with torch.no_grad():
        change = model(ids, *held)[:, 1] - model(baseline, *held)[:, 1]
    torch.testing.assert_close(attributions.sum(1).double(), change.double(), rtol=0, atol=1e-5 * float(change.abs().max()))
    ig = onnx_attr.IntegratedGradients(model).attribute(ids, baselines=baseline, target=1, additional_forward_args=held,
                                                        n_steps=200)
    assert ig.shape == ids.shape
    torch.testing.assert_close(ig.sum(1).double(), change.double(), rtol=0, atol=0.05 * float(change.abs().max()))


@pytest.mark.parametrize("level", ["Sigmoid", "Tanh", "HardSigmoid"])
def test_an_activation_fused_by_the_optimizer_is_found_split_and_smoothed(tmp_path, level):
    """onnxruntime's ORT_ENABLE_EXTENDED folds a head's final Sigmoid into FusedConv and every Relu into
    the Conv before it (hunt 37): split back, the file means what its unoptimized twin means. Oracles:
    onnxruntime on the optimized file (the outputs, and the final activation of the stripped logits), and
    the unoptimized twin's final activation and smoothed Relus."""
    import onnxruntime as ort

    from onnx_attr.deeplift.smooth import smooth

    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node(level, ["h"], ["heat"])]
    proto = make_model(nodes, [("x", FLOAT, [1, 3, 12, 12])], [("heat", FLOAT, [1, 1, 12, 12])],
                       {"w": (RNG.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
                        "b": RNG.standard_normal(8).astype(np.float32),
                        "w2": (RNG.standard_normal((1, 8, 3, 3)) * 0.3).astype(np.float32),
                        "b2": RNG.standard_normal(1).astype(np.float32)}, opset=13)
    src, optimized = tmp_path / "plain.onnx", tmp_path / "extended.onnx"
    src.write_bytes(proto.SerializeToString())
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    fused = [n for n in onnx.load(str(optimized)).graph.node if n.op_type == "FusedConv"]
    assert fused, "onnxruntime fused nothing: the test needs its FusedConv"
    x = (RNG.random((1, 3, 12, 12)) * 255).astype(np.float32)
    expected = ort.InferenceSession(str(optimized), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    kept = onnx_attr.load(str(optimized), strip_final_activation=False)
    assert np.allclose(kept.run({"x": x})[0], expected, rtol=1e-4, atol=1e-5)  # onnxruntime's own tanh approximation
    twin, model = onnx_attr.load(str(src)), onnx_attr.load(str(optimized))
    final = model.outputs[0].final_activation
    if level == "Sigmoid":  # a final activation the strip knows: found in the optimized file as in its twin
        assert final is not None and final.op_type == "Sigmoid" and final.stripped
        logits = model.run({"x": x})[0].double()
        assert np.allclose(torch.sigmoid(logits).numpy(), expected, rtol=1e-4, atol=1e-5)
    assert (final is None) == (twin.outputs[0].final_activation is None)
    assert model.verify({"x": x}).passed
    smoothed = smooth(model, inputs={"x": x})
    assert len(smoothed.smoothing["replaced"]) == len(smooth(twin, inputs={"x": x}).smoothing["replaced"]) == 1

