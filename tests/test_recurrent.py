"""LSTM, GRU and RNN built from their gates: match onnxruntime, and DeepLift through them is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

import onnx_attr

from conftest import FLOAT, make_model, ort_run
from exporting import to_onnx

H, I, SEQ, BATCH = 3, 4, 5, 2


GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _lstm_model(direction="forward", layout=0, peepholes=False, states=False, lens=False, op="LSTM", **attrs):
    rng = np.random.default_rng(0)
    dirs = 2 if direction == "bidirectional" else 1
    gates = GATES[op]
    inits = {"W": rng.standard_normal((dirs, gates * H, I)).astype(np.float32) * 0.7,
             "R": rng.standard_normal((dirs, gates * H, H)).astype(np.float32) * 0.7,
             "B": rng.standard_normal((dirs, 2 * gates * H)).astype(np.float32) * 0.3}
    names = ["X", "W", "R", "B", "", "", "", ""]
    inputs = [("X", FLOAT, [SEQ, BATCH, I] if layout == 0 else [BATCH, SEQ, I])]
    if lens:
        names[4] = "lens"
        inputs.append(("lens", helper.TensorProto.INT32, [BATCH]))
    shape = [dirs, BATCH, H] if layout == 0 else [BATCH, dirs, H]
    if states:
        names[5] = "h0"
        inputs.append(("h0", FLOAT, shape))
        if op == "LSTM":
            names[6] = "c0"
            inputs.append(("c0", FLOAT, shape))
    if peepholes:
        names[7] = "P"
        inits["P"] = rng.standard_normal((dirs, 3 * H)).astype(np.float32) * 0.5
    while names and names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    node = helper.make_node(op, names, outs, name="rnn", hidden_size=H, direction=direction, layout=layout, **attrs)
    y_shape = [SEQ, dirs, BATCH, H] if layout == 0 else [BATCH, SEQ, dirs, H]
    outputs = [("Y", FLOAT, y_shape)] + [(o, FLOAT, shape) for o in outs[1:]]
    return make_model([node], inputs, outputs, inits, opset=14)


CONFIGS = [dict(), dict(direction="reverse"), dict(direction="bidirectional"), dict(layout=1),
           dict(peepholes=True), dict(states=True), dict(lens=True), dict(layout=1, states=True, direction="bidirectional"),
           dict(op="GRU"), dict(op="GRU", linear_before_reset=1), dict(op="GRU", layout=1, states=True, lens=True),
           dict(op="GRU", layout=1, direction="bidirectional", linear_before_reset=1), dict(op="RNN"),
           dict(op="RNN", layout=1, states=True, direction="bidirectional"),
           # padded sequences (PyTorch's pack_padded_sequence) read backwards: each row from its own end
           dict(lens=True, direction="reverse"), dict(op="GRU", lens=True, direction="bidirectional"),
           dict(op="GRU", layout=1, lens=True, states=True, direction="bidirectional"),
           dict(layout=1, lens=True, direction="bidirectional", peepholes=True),
           dict(op="RNN", layout=1, lens=True, direction="reverse")]
#: named activations (Keras's hard_sigmoid gates, an RNN over Relu, PyTorch 0.4's lowercase names), each
#: alpha and beta taken in order by the functions that use one, as onnxruntime reads them
ACTIVATED = [dict(layout=1, activations=["HardSigmoid", "Tanh", "Tanh"], activation_alpha=[0.25], activation_beta=[0.45]),
             dict(layout=1, activations=["Sigmoid", "Softsign", "Elu", "HardSigmoid", "Tanh", "Softplus"],
                  activation_alpha=[0.7, 0.3], direction="bidirectional"),
             dict(op="GRU", layout=1, activations=["hardsigmoid", "tanh"]),
             dict(op="GRU", layout=1, activations=["Sigmoid", "ScaledTanh"], activation_alpha=[1.7], activation_beta=[0.6]),
             dict(op="RNN", layout=1, activations=["Relu"]),
             dict(op="RNN", layout=1, direction="bidirectional", activations=["Relu", "LeakyRelu"], activation_alpha=[0.2]),
             dict(op="RNN", layout=1, activations=["Softplus"]), dict(op="RNN", layout=1, activations=["ThresholdedRelu"],
                                                                    activation_alpha=[0.3]),
             # clip: every activation's input bounded first
             dict(layout=1, clip=0.8, direction="bidirectional"), dict(op="GRU", layout=1, clip=0.5),
             dict(op="RNN", layout=1, clip=0.7, activations=["Relu"]),
             dict(layout=1, input_forget=1), dict(layout=1, input_forget=1, peepholes=True, direction="bidirectional")]
CONFIGS += ACTIVATED


def _feeds(model, rng):
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.name == "lens":
            feeds["lens"] = np.array([SEQ, 3], np.int32)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _oracle(config, feeds):
    """onnxruntime; it has no batch-first (layout=1) kernel, so those run as the layout-0 twin."""
    if config.get("layout", 0) == 0:
        return ort_run(_lstm_model(**config), feeds)
    twin = _lstm_model(**{**config, "layout": 0})
    moved = {k: (v.transpose(1, 0, 2) if v.ndim == 3 else v) for k, v in feeds.items()}
    y, *finals = ort_run(twin, moved)
    return [y.transpose(2, 0, 1, 3)] + [f.transpose(1, 0, 2) for f in finals]


@pytest.mark.parametrize("config", CONFIGS, ids=[",".join(f"{k}={v}" for k, v in c.items()) or "default" for c in CONFIGS])
def test_lstm_matches_onnxruntime_and_deeplift_is_exact(config):
    model = _lstm_model(**config)
    rng = np.random.default_rng(1)
    feeds = _feeds(model, rng)
    imported = onnx_attr.load(model)
    for got, want in zip(imported.run(feeds), _oracle(config, feeds)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # completeness for each output, attributing X (and the initial states when given)
    attributed = {k: v for k, v in feeds.items() if k != "lens"}
    extra = {"lens": feeds["lens"]} if "lens" in feeds else None
    baselines = {k: rng.standard_normal(v.shape).astype(np.float32) * 0.3 for k, v in attributed.items()}
    batch_axis = 1 if config.get("layout", 0) == 0 else 0
    for output, target in (("Y_h", (0, 1)), ("Y_c", (0, 2)), ("Y", (1, 0, 1))):
        if batch_axis == 1 or output not in [o.name for o in model.graph.output]:  # layout 0 puts the batch on axis 1: attribute one example at a time
            continue
        dl = onnx_attr.DeepLift(imported)
        _, delta = dl.attribute(attributed, baselines, target=target, output=output,
                                additional_forward_args=extra, return_convergence_delta=True)
        assert np.abs(delta.numpy()).max() < 1e-4, (output, delta)


class SmallLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm, self.head = nn.LSTM(4, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.head(y[:, -1])


def test_pytorch_lstm_exported_at_batch_one_end_to_end():
    model = SmallLSTM().eval()
    imported = onnx_attr.load(to_onnx(model, torch.randn(1, 6, 4), dynamic_batch=False))
    x = torch.randn(3, 6, 4)
    report = imported.verify(x[:1].numpy())
    assert report.passed, report.format()
    dl = onnx_attr.DeepLift(imported)
    attributions, delta = dl.attribute(x, torch.zeros(1, 6, 4), target=[0, 1, 2], return_convergence_delta=True)
    with torch.no_grad():
        change = model(x)[[0, 1, 2], [0, 1, 2]] - model(torch.zeros(1, 6, 4))[0, [0, 1, 2]]
    assert change.abs().min() > 1e-3
    assert (delta.abs() / change.double().abs().clamp_min(1.0)).max() <= 1e-4
    assert any(op == "LSTM" for _, op, _ in dl.engine.rewrite.rewritten)


class SmallGRU(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.gru, self.head = nn.GRU(4, 8, batch_first=True, bidirectional=True), nn.Linear(16, 3)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.head(y[:, -1])


def test_pytorch_bidirectional_gru_end_to_end():
    model = SmallGRU().eval()
    x = torch.randn(3, 6, 4)
    imported = onnx_attr.load(to_onnx(model, x))
    assert imported.verify(x.numpy()).passed
    attributions, delta = onnx_attr.DeepLift(imported).attribute(x, torch.zeros(1, 6, 4), target=2,
                                                                 return_convergence_delta=True)
    assert delta.abs().max() < 1e-4 and attributions.abs().sum() > 0


def test_gate_multipliers_computed_together_are_the_per_step_ones(monkeypatch):
    """The recurrence's gates take their rescale multipliers from one stacked computation per
    function (`RescaleBatch`); attributions must be those of a rescale per step and gate (the
    per-step form, forced here), to rounding: only the tolerance's scale (per stack, not per
    step) may differ, and it decides only between two forms of the same slope."""
    from onnx_attr.deeplift.rules import paired, recurrent

    model = onnx_attr.load(_lstm_model(layout=1, direction="bidirectional", peepholes=True))
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((BATCH, SEQ, I)) * 4).astype(np.float32)
    baseline = np.zeros_like(x)
    baseline[:, 2] = x[:, 2]  # a step at its reference: gates with elements within the tolerance
    batched = onnx_attr.DeepLift(model).attribute({"X": x}, {"X": baseline}, target=(1, 0, 2), output="Y")
    monkeypatch.setattr(recurrent.Paired, "unary", lambda self, fn, v: paired.rescale(fn, *v))
    per_step = onnx_attr.DeepLift(model).attribute({"X": x}, {"X": baseline}, target=(1, 0, 2), output="Y")
    np.testing.assert_allclose(np.asarray(batched["X"]), np.asarray(per_step["X"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", [dict(layout=1), dict(layout=1, states=True, direction="bidirectional", peepholes=True),
                                    dict(op="GRU", layout=1, lens=True, states=True, direction="bidirectional"),
                                    dict(op="RNN", layout=1, lens=True, direction="reverse")],
                         ids=["lstm", "lstm-bidirectional-states-peepholes", "gru-padded", "rnn-padded-reverse"])
def test_recurrence_decomposed_in_the_forward_is_the_op_and_its_multipliers(config, monkeypatch):
    """The recurrent rule runs its decomposition once, in the forward, and differentiates that graph
    in the backward. Its value must be the op's own bit for bit (it flows on downstream as the
    model's), and the attributions those of the decomposition re-run in the backward (forced here)."""
    from onnx_attr.deeplift.rules.recurrent import RecurrentRule

    proto = _lstm_model(**config)
    model = onnx_attr.load(proto)
    rng = np.random.default_rng(3)
    feeds = {k: (v * 30).astype(v.dtype) if v.dtype == np.float32 else v for k, v in _feeds(proto, rng).items()}
    attributed = {k: v for k, v in feeds.items() if k != "lens"}
    extra = {"lens": feeds["lens"]} if "lens" in feeds else None
    # one shared baseline (batch 1, far from the inputs): its reference pass is kept for the next call
    baselines = {k: (rng.standard_normal((1, *v.shape[1:])) * 20).astype(np.float32) for k, v in attributed.items()}
    target = (SEQ - 2, 0, 1)
    method = onnx_attr.DeepLift(model)
    got, delta = method.attribute(attributed, baselines, target=target, output="Y", additional_forward_args=extra,
                                  return_convergence_delta=True)
    assert float(np.abs(np.asarray(delta)).max()) < 1e-4
    # the reference's side was recorded on that call (one reference, cached; not where per-example
    # lengths are held: the reference pass then has the batch): read back on the next, with the same
    # attributions bit for bit
    if extra is None:
        memos = [memo for _, _, memo in method.engine.references._entries[-1][1].values()]
        assert any(m.get("tape") is not None and m["tape"].recorded for m in memos)
    replayed = method.attribute(attributed, baselines, target=target, output="Y", additional_forward_args=extra)
    for k in got:
        np.testing.assert_array_equal(np.asarray(replayed[k]), np.asarray(got[k]))
    # the rewritten module in DeepLift mode gives the plain module's outputs, bit for bit
    engine = method.engine
    plain = model.run({**attributed, **(extra or {})})
    state = engine.rewrite.state
    names = [s.name for s in model.inputs]
    args = [torch.from_numpy(np.asarray({**attributed, **(extra or {})}[n])) for n in names]
    refs = [torch.from_numpy(np.asarray({**baselines, **(extra or {})}[n])).expand_as(a) for n, a in zip(names, args)]
    try:
        state.clear()
        state.mode = "reference"
        with torch.no_grad():
            engine.rewrite.module(*refs)
        state.mode = "deeplift"
        outs = engine.rewrite.module(*args)
    finally:
        state.clear()
    for o, p in zip(outs if isinstance(outs, tuple) else (outs,), plain):
        assert torch.equal(o.detach(), p)
    monkeypatch.setattr(RecurrentRule, "keeps_graph", False)  # the decomposition re-run in the backward
    again = onnx_attr.DeepLift(model).attribute(attributed, baselines, target=target, output="Y",
                                                additional_forward_args=extra)
    for k in got:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(again[k]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("config", ACTIVATED[:1] + ACTIVATED[4:6],
                         ids=["lstm-hardsigmoid", "rnn-relu", "rnn-relu-leakyrelu-bidirectional"])
def test_named_activations_at_large_magnitudes(config):
    """Inputs x40 (pre-activations in the hundreds: hard sigmoids saturate, a Relu recurrence grows) and
    a far baseline: onnxruntime's values, and DeepLift complete against onnxruntime's own outputs."""
    model = _lstm_model(**config)
    rng = np.random.default_rng(5)
    feeds = {k: v * 40 for k, v in _feeds(model, rng).items()}
    far = {k: -v for k, v in feeds.items()}
    imported = onnx_attr.load(model)
    ours, theirs = imported.run(feeds), _oracle(config, feeds)
    for got, want in zip(ours, theirs):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-3)
    _, delta = onnx_attr.DeepLift(imported).attribute(feeds, far, target=(0, 1), output="Y_h",
                                                      return_convergence_delta=True)
    moved = theirs[1][:, 0, 1] - _oracle(config, far)[1][:, 0, 1]
    assert np.abs(moved).max() > 0.1
    assert np.abs(delta.numpy()).max() <= 1e-5 * max(1.0, float(np.abs(moved).max()))


def test_lstm_clip_bounds_the_gates_not_the_cell():
    """A cell driven past the clip (biases +3, positive inputs x5: c reaches ~3 > 2): onnxruntime bounds
    the gates' pre-activations only, so h = o * tanh(c) reads the unclipped cell."""
    from onnx import numpy_helper

    model = _lstm_model(clip=2.0)
    bias = next(t for t in model.graph.initializer if t.name == "B")
    bias.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(bias).shape, 3.0, np.float32), "B"))
    feeds = {k: np.abs(v) * 5 for k, v in _feeds(model, np.random.default_rng(1)).items()}
    want = ort_run(model, feeds)
    assert np.abs(want[2]).max() > 2.5
    for got, expected in zip(onnx_attr.load(model).run(feeds), want):
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
