"""The contract every registered method keeps, checked for each entry of the method registry: a
new method gets all of it by registering. On a tiny conv net (an image input and an additive
tabular input, two outputs):

- every input form (tensor, tuple, dict, numpy: numpy in, numpy out) gives the same attributions;
- every target form (int, one per example as a list or a tensor, a callable) gives, per example,
  what that example's own int target gives;
- `output=` by name or index picks that output (the second output is twice the first);
- a fixed-batch export (batch 2) gives what the dynamic export gives on 3 examples (padding);
- NoiseTunnel wraps it; CPU and CUDA agree (skipped without CUDA);
- every bad call is an OnnxAttrError; `onnx-attr attribute --method M` works for CLI methods.

Oracles here are the method itself under another call form (the forms must agree) and the output
relation built into the model; each method's values are checked against Captum in its own tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import onnx_attr
from onnx_attr.methods.registry import REGISTRY, MethodEntry

ENTRIES = sorted(REGISTRY.values(), key=lambda e: e.name)
IDS = [e.name for e in ENTRIES]


class TinyNet(nn.Module):
    """conv -> relu -> maxpool-free head, plus 2·y on the logits; a second output twice the first."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x, y):
        logits = self.head(self.relu(self.conv(x)).flatten(1)) * 30.0 + 2.0 * y
        return logits, logits * 2.0


def _export(dynamic: bool) -> onnx_attr.AttributableModel:
    from exporting import to_onnx

    example = (torch.rand(2, 1, 4, 4), torch.rand(2, 3))
    data = to_onnx(TinyNet(), example, dynamic_batch=dynamic, input_names=("x", "y"))
    return onnx_attr.load(data)


@pytest.fixture(scope="module")
def model():
    return _export(True)


@pytest.fixture(scope="module")
def fixed_model():
    return _export(False)


@pytest.fixture(scope="module")
def layer(model):
    """The Relu's output tensor: a 4-D hidden layer for layer and neuron methods."""
    return next(n.output[0] for n in model.onnx_model.graph.node if n.op_type == "Relu")


def _inputs(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 4, 4, generator=g) * 255.0, torch.rand(n, 3, generator=g) * 10.0


def _explainer(e: MethodEntry, model, layer):
    return e.cls(model, layer, **e.init) if e.needs_layer else e.cls(model, **e.init)


def _call(e: MethodEntry, explainer, inputs, target, **extra):
    """The entry's call, with small settings and, for distributions, three baseline rows; seeded,
    so that methods that draw at random draw the same."""
    options = {k: v for k, v in {"n_steps": 8, "n_samples": 4}.items() if _takes(explainer, k)}
    options.update({k: REQUIRED[k](inputs) for k in e.required})
    baselines = None
    if e.distribution:
        rows = _inputs(3)
        baselines = _like(inputs, tuple(r * 0.1 for r in rows))
    torch.manual_seed(0)
    np.random.seed(0)
    result, _ = e.run(explainer, inputs, baselines, target=target, additional_forward_args=None,
                      output=extra.pop("output", None), options={**options, **extra})
    return result


def _blocks(inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """7 features: x's four 2×2 blocks (ids 0-3) and y's three elements (4-6), in the inputs' order."""
    block = torch.arange(4).reshape(2, 2).repeat_interleave(2, 0).repeat_interleave(2, 1)
    return block.reshape(1, 1, 4, 4), torch.arange(4, 7).reshape(1, 3)


#: Arguments some methods need that have no default, made for the tiny net's inputs.
REQUIRED = {"sliding_window_shapes": lambda inputs: ((1, 2, 2), (1,)), "target": lambda inputs: 1,
            "feature_mask": _blocks}


def _takes(explainer, name: str) -> bool:
    import inspect

    return name in inspect.signature(explainer.attribute).parameters


def _like(inputs, tensors):
    """`tensors` (x, y) in the form `inputs` came in."""
    if isinstance(inputs, dict):
        return {"x": tensors[0], "y": tensors[1]}
    if isinstance(inputs, tuple) and isinstance(inputs[0], np.ndarray):
        return tuple(t.numpy() for t in tensors)
    return tuple(tensors)


def _target(e: MethodEntry, per_example):
    """A class target for input and layer methods; a neuron of the 4-D relu layer for neuron ones."""
    if e.family == "neuron":
        return [(c % 2, c, c) for c in per_example] if isinstance(per_example, list) else (
            per_example % 2, per_example, per_example)
    return per_example


def _as_list(result) -> list[torch.Tensor]:
    items = list(result.values()) if isinstance(result, dict) else list(result) if isinstance(
        result, (tuple, list)) else [result]
    return [torch.as_tensor(np.asarray(i)) if not isinstance(i, torch.Tensor) else i for i in items]


def _close(a, b, what: str) -> None:
    for x, y in zip(_as_list(a), _as_list(b), strict=True):
        torch.testing.assert_close(x.double(), y.double(), rtol=1e-4, atol=1e-4 * (1 + (float(y.abs().max()) if y.numel() else 0.0)),
                                   msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("e", ENTRIES, ids=IDS)
def test_every_input_form_agrees_and_numpy_comes_back_as_numpy(e, model, layer):
    explainer = _explainer(e, model, layer)
    x, y = _inputs()
    target = _target(e, 1)
    reference = _call(e, explainer, (x, y), target)
    _close(_call(e, explainer, {"x": x, "y": y}, target), reference, "dict inputs")
    from_numpy = _call(e, explainer, (x.numpy(), y.numpy()), target)
    assert all(isinstance(a, np.ndarray) for a in (from_numpy.values() if isinstance(from_numpy, dict)
                                                   else from_numpy if isinstance(from_numpy, (tuple, list))
                                                   else [from_numpy])), "numpy in, numpy out"
    _close(from_numpy, reference, "numpy inputs")
    assert isinstance(explainer.last_report, dict) and explainer.last_report.get("method")


@pytest.mark.parametrize("e", ENTRIES, ids=IDS)
def test_every_target_form_gives_each_example_its_own_target(e, model, layer):
    explainer = _explainer(e, model, layer)
    x, y = _inputs()
    classes = [0, 2, 1]
    # one example alone: only for methods defined on one (and not drawing, whose draws differ by batch)
    alone_fits = e.min_examples <= 1 and not e.draws
    alone = [_as_list(_call(e, explainer, (x[i:i + 1], y[i:i + 1]), _target(e, c)))
             for i, c in enumerate(classes)] if alone_fits else []
    forms = {"list": _target(e, classes)}
    if e.family != "neuron":
        forms["tensor"] = torch.tensor(classes)
    results = {form: _as_list(_call(e, explainer, (x, y), target)) for form, target in forms.items()}
    for form, together in results.items():
        if not alone_fits:  # the forms must agree with each other
            _close(together, results["list"], f"target as a {form}")
            continue
        for i in range(len(classes)):
            _close([t[i:i + 1] for t in together], alone[i], f"target as a {form}, example {i}")
    # a callable picks one value per row of whatever it is handed (the rows may be repeated per step)
    picked = (lambda h: h[:, 1, 1, 1]) if e.family == "neuron" else (lambda out: out[:, 1])
    _close(_call(e, explainer, (x, y), picked), _call(e, explainer, (x, y), _target(e, 1)), "a callable target")


def _takes_output(e: MethodEntry) -> bool:
    import inspect

    return e.family != "neuron" and "output" in inspect.signature(e.cls.attribute).parameters


@pytest.mark.parametrize("e", [e for e in ENTRIES if _takes_output(e)], ids=lambda e: e.name)
def test_output_picks_by_name_and_index(e, model, layer):
    """The second output is twice the first: its attributions are too (or, for a rule that is not
    linear in the output, Captum's sign conventions aside, the same up to that factor). Lime's
    Lasso penalty does not scale with the output, so Lime runs as least squares (alpha=0) here."""
    explainer = e.cls(model, alpha=0.0) if e.class_name == "Lime" else _explainer(e, model, layer)
    x, y = _inputs()
    first = _as_list(_call(e, explainer, (x, y), 1))
    by_name = _as_list(_call(e, explainer, (x, y), 1, output=model.outputs[1].name))
    by_index = _as_list(_call(e, explainer, (x, y), 1, output=1))
    _close(by_name, by_index, "output by name vs by index")
    if e.class_name in ("GuidedGradCam",):  # GradCAM map times guided gradients: four times
        _close(by_name, [4 * t for t in first], "twice the output: twice the map, twice the gradients")
    else:
        _close(by_name, [2 * t for t in first], "twice the output, twice the attributions")
    with pytest.raises(onnx_attr.OnnxAttrError):
        _call(e, explainer, (x, y), 1, output="no such output")
    with pytest.raises(onnx_attr.OnnxAttrError):
        _call(e, explainer, (x, y), 1, output=5)


@pytest.mark.parametrize("e", ENTRIES, ids=IDS)
def test_a_fixed_batch_export_gives_what_the_dynamic_one_gives(e, model, fixed_model, layer):
    x, y = _inputs(3)  # 3 examples on an export fixed at 2: a padded last pass
    target = _target(e, [0, 2, 1])
    dynamic = _call(e, _explainer(e, model, layer), (x, y), target)
    fixed = _call(e, _explainer(e, fixed_model, layer), (x, y), target)
    _close(fixed, dynamic, "fixed batch 2 vs dynamic batch")


@pytest.mark.parametrize("e", [e for e in ENTRIES if e.family != "neuron" and not e.takes_layer],
                         ids=lambda e: e.name)  # GuidedGradCam: Captum's empty result for y cannot be averaged
def test_noise_tunnel_wraps_it(e, model, layer):
    explainer = _explainer(e, model, layer)
    x, y = _inputs(2)
    kwargs = {**({"target": 1} if _takes(explainer, "target") else {}),
              **({"baselines": _like((x, y), tuple(r * 0.1 for r in _inputs(3)))} if e.distribution else {})}
    if _takes(explainer, "n_steps"):
        kwargs["n_steps"] = 4
    kwargs.update({k: REQUIRED[k]((x, y)) for k in e.required})
    torch.manual_seed(0)
    smoothed = onnx_attr.NoiseTunnel(explainer).attribute((x, y), nt_samples=2, stdevs=0.5, **kwargs)
    plain = _call(e, explainer, (x, y), 1)
    for s, p in zip(_as_list(smoothed), _as_list(plain), strict=True):
        assert s.shape == p.shape and bool(torch.isfinite(s).all())


@pytest.mark.parametrize("e", ENTRIES, ids=IDS)
def test_bad_calls_are_clear(e, model, layer):
    explainer = _explainer(e, model, layer)
    x, y = _inputs(2)
    bad_target = (5, 0, 0) if e.family == "neuron" else 7
    calls = [((x,), _target(e, 0)),  # an input missing
             ({"x": x, "z": y}, _target(e, 0)),  # an unknown name
             ((x, y[:1, :2]), _target(e, 0))]  # a wrong shape
    if e.family == "neuron" or _takes(explainer, "target"):
        calls += [((x, y), bad_target),  # out of range
                  ((x, y), [_target(e, 0)] * 3)]  # a target per example, for 3 of 2
    for inputs, target in calls:
        with pytest.raises(onnx_attr.OnnxAttrError):
            _call(e, explainer, inputs, target)
    if e.needs_layer:
        with pytest.raises(onnx_attr.OnnxAttrError):
            _call(e, _explainer(e, model, "no_such_tensor"), (x, y), _target(e, 0))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("e", ENTRIES, ids=IDS)
def test_cpu_and_cuda_agree(e, model, layer):
    from exporting import to_onnx

    gpu = onnx_attr.load(to_onnx(TinyNet(), _inputs(2), input_names=("x", "y")), device="cuda")
    x, y = _inputs()
    target = _target(e, 1)
    cpu = _call(e, _explainer(e, model, layer), (x, y), target)
    cuda = _call(e, _explainer(e, gpu, layer), (x.cuda(), y.cuda()), target)
    if e.distribution:
        return  # draws on the device differ from the CPU's
    _close([t.cpu() for t in _as_list(cuda)], cpu, "cuda vs cpu")


@pytest.mark.parametrize("e", [e for e in ENTRIES if e.cli], ids=lambda e: e.name)
def test_the_cli_runs_it(e, model, layer, tmp_path):
    from onnx_attr.app.cli import main

    path = tmp_path / "tiny.onnx"
    path.write_bytes(model.onnx_model.SerializeToString())
    x, y = _inputs(2)
    np.savez(tmp_path / "in.npz", x=x.numpy(), y=y.numpy())
    args = ["attribute", str(path), "-i", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out"), "--no-pictures",
            "-q", "--method", e.name, "--target", "1" if e.family != "neuron" else "1:2:2"]
    if e.distribution:
        np.savez(tmp_path / "bg.npz", x=x.numpy() * 0.1, y=y.numpy() * 0.1)
        args += ["--baseline", str(tmp_path / "bg.npz")]
    if e.needs_layer:
        args += ["--layer", layer]
    assert main(args) == 0
    found = np.load(tmp_path / "out" / "attributions.npz")
    assert set(found.files) == ({layer} if e.family == "layer" else {"x", "y"})
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"] == (e.title or e.class_name)
    assert (report["max_relative_delta"] is None) == (not e.delta)


def test_a_short_last_pass_is_folded_for_methods_that_need_several_rows(model, tmp_path):
    """--batch-size 2 over 3 examples would leave FeaturePermutation one row in its last pass, which it
    cannot shuffle: the last pass joins the one before, and every example gets attributions."""
    from onnx_attr.app.cli import main

    path = tmp_path / "tiny.onnx"
    path.write_bytes(model.onnx_model.SerializeToString())
    x, y = _inputs(3)
    np.savez(tmp_path / "in.npz", x=x.numpy(), y=y.numpy())
    assert main(["attribute", str(path), "-i", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out"), "-q",
                 "--no-pictures", "--method", "featurepermutation", "--target", "1", "--batch-size", "2"]) == 0
    assert np.load(tmp_path / "out" / "attributions.npz")["x"].shape[0] == 3


# --- batch axes: every method on four layouts, against the method on a batch-first twin ------------------

from batch_axis_cases import CASES, case, loaded  # noqa: E402

#: (method, case) pairs that refuse by name (an OnnxAttrError) instead of answering, and why.
REFUSALS: dict[tuple[str, str], str] = {
    (name, "frames"): "draws samples per example and stacks them on the batch axis; the frames' rows mix"
    for name in ("gradientshap", "layergradientshap", "neurongradientshap")}
#: (method, case) pairs whose twin is not the same function for the method, checked instead
#: against the method run one example at a time (its row of the batch must be the same).
ONE_AT_A_TIME: dict[tuple[str, str], str] = {
    ("revealcancel", "held"): "RevealCancel goes to Relus fed by weighted ops plus constants: the twin's baked-in "
                              "h is a constant bias, the original's held h an input, so the Relu keeps Rescale",
}


def _axis_call(e: MethodEntry, c, which: str):
    """The entry's call on the case's original or twin (inputs, masks, baselines in its layout)."""
    twin = which == "twin"
    model = loaded(c.name, "twin" if twin else "model")
    explainer = _explainer(e, model, c.layer)
    inputs = c.twin_inputs(c.inputs) if twin else dict(c.inputs)
    neuron = e.family == "neuron"
    target = (c.twin_neuron if twin else c.neuron) if neuron else (c.twin_target if twin else c.target)
    options = {k: v for k, v in {"n_steps": 8, "n_samples": 4}.items() if _takes(explainer, k)}
    made = {"sliding_window_shapes": c.windows,
            "feature_mask": c.twin_inputs(c.masks) if twin else c.masks,
            "target": c.twin_target if twin else c.target}
    options.update({k: made[k] for k in e.required})
    baselines = None
    if e.distribution:
        baselines = (c.twin_rows or c.twin_inputs(c.rows)) if twin else dict(c.rows)
    torch.manual_seed(0)
    np.random.seed(0)
    result, _ = e.run(explainer, inputs, baselines, target=target, additional_forward_args=None if twin else c.held,
                      output=None, options=options)
    return result


def _as_arrays(result) -> list[np.ndarray]:
    return [np.asarray(r, dtype=np.float64) for r in _as_list(result)]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("e", ENTRIES, ids=IDS)
def test_every_batch_layout_gives_what_the_batch_first_twin_gives(e, name):
    """A state batched on axis 1, a held input without a batch, a time-major output, frames that
    only look like a batch: the method on the original equals the method on its batch-first twin
    (moved back), or refuses by name where REFUSALS says so."""
    c = case(name)
    try:
        twin = _axis_call(e, c, "twin")
    except onnx_attr.OnnxAttrError as err:
        twin = err
    try:
        ours = _axis_call(e, c, "model")
    except onnx_attr.OnnxAttrError as err:
        if (e.name, name) in REFUSALS or isinstance(twin, Exception):
            return
        raise
    assert (e.name, name) not in REFUSALS, "it answers now: drop it from REFUSALS"
    if (e.name, name) in ONE_AT_A_TIME:
        n = len(next(iter(c.inputs.values())))
        for i in range(n):
            alone = c.__class__(**{**c.__dict__, "inputs": {k: v[i:i + 1] for k, v in c.inputs.items()}})
            for g, x in zip(_as_arrays(ours), _as_arrays(_axis_call(e, alone, "model"))):
                np.testing.assert_allclose(g[i:i + 1], x, rtol=1e-4, atol=1e-4 * (1 + np.abs(x).max()))
        return
    assert not isinstance(twin, Exception), f"the twin refused ({twin}) but the original answered"
    if e.family == "layer":
        expected = [c.layer_back(t) for t in _as_arrays(twin)]
    else:
        names = list(c.inputs)
        expected = [c.back[k](t) if t.size else t for k, t in zip(names, _as_arrays(twin))]
    got = _as_arrays(ours)
    assert len(got) == len(expected)
    for g, x in zip(got, expected):
        assert g.shape == x.shape, f"shape {g.shape}, the twin's moved back {x.shape}"
        if x.size == 0:  # GuidedGradCam's empty result for an input its map cannot be upsampled to
            continue
        np.testing.assert_allclose(g, x, rtol=1e-4, atol=1e-4 * (1 + np.abs(x).max()))
