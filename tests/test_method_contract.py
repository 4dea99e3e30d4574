"""Captum's calling forms accepted by every method, and each bad call a clear OnnxAttrError (never
a raw TypeError/RuntimeError/IndexError). Oracles: Captum on the same module, hand-computed
values, and the completeness identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import onnx_attr
from captum_models import load

T = torch.tensor
_IN = (T([[23.0, 100.0, 0.0], [20.0, 50.0, 30.0]]), T([[20.0, 50.0, 30.0], [0.0, 100.0, 0.0]]),
       T([[0.0, 100.0, 10.0], [2.0, 10.0, 3.0]]))


def _captum(name):
    """Captum's own method classes on the imported module (the same weights as ours)."""
    import captum.attr

    return captum.attr, load(name).module


# --- NoiseTunnel ------------------------------------------------------------------------------

def test_noise_tunnel_repeats_forward_args_and_per_example_baselines():
    """Additional forward args and per-example baselines in a tuple follow their examples."""
    model = load("MultiLayerAddInput")
    x, add = T([[20.0, 50.0, 30.0], [2.0, 10.0, 3.0]]), T([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])
    baselines = (T([[1.0, 4, 7], [3.0, 6, 9]]),)
    torch.manual_seed(0)
    (ours,), delta = onnx_attr.NoiseTunnel(onnx_attr.IntegratedGradients(model)).attribute(
        (x,), nt_samples=4, stdevs=0.1, baselines=baselines, target=0, additional_forward_args=(add,),
        return_convergence_delta=True, n_steps=20)
    captum, module = _captum("MultiLayerAddInput")
    torch.manual_seed(0)
    (theirs,), c_delta = captum.NoiseTunnel(captum.IntegratedGradients(module)).attribute(
        (x,), nt_samples=4, stdevs=0.1, baselines=baselines, target=0, additional_forward_args=(add,),
        return_convergence_delta=True, n_steps=20)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)
    assert delta.shape == c_delta.shape == (8,)


def test_noise_tunnel_delta_with_two_inputs():
    """`a, d = nt.attribute(..., return_convergence_delta=True)`: attributions and deltas, not
    the two inputs' attributions."""
    nt = onnx_attr.NoiseTunnel(onnx_attr.DeepLift(load("ReLULinear")))
    (a1, a2), delta = nt.attribute((T([[-10.0, 1.0, -5.0]]), T([[3.0, 3.0, 1.0]])), nt_samples=3, stdevs=0.5,
                                   return_convergence_delta=True, nt_samples_batch_size=2)
    assert a1.shape == a2.shape == (1, 3) and delta.shape == (3,)
    assert float(delta.abs().max()) < 1e-4


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_noise_tunnel_batches_of_samples_equal_captums(batch):
    model = load("MultiLayer")
    x = T([[20.0, 50.0, 30.0], [2.0, 10.0, 3.0]])
    torch.manual_seed(3)
    ours = onnx_attr.NoiseTunnel(onnx_attr.Saliency(model)).attribute(
        x, nt_type="vargrad", nt_samples=7, nt_samples_batch_size=batch, stdevs=2.0, target=[0, 1])
    captum, module = _captum("MultiLayer")
    torch.manual_seed(3)
    theirs = captum.NoiseTunnel(captum.Saliency(module)).attribute(
        x, nt_type="vargrad", nt_samples=7, nt_samples_batch_size=batch, stdevs=2.0, target=[0, 1])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_noise_tunnel_bad_calls_are_clear():
    nt = onnx_attr.NoiseTunnel(onnx_attr.Saliency(load("MultiLayer")))
    x = T([[1.0, 2.0, 3.0]])
    for kwargs in ({"nt_samples_batch_size": 0}, {"nt_samples": 0}, {"nt_type": "mean"},
                   {"return_convergence_delta": True}, {"stdevs": (1.0, 2.0)}):
        with pytest.raises(onnx_attr.OnnxAttrError):
            nt.attribute(x, target=0, **kwargs)


# --- metrics ----------------------------------------------------------------------------------

def test_sensitivity_max_repeats_forward_args():
    model = load("MultiLayerAddInput")
    x, add = T([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), T([[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
    torch.manual_seed(0)
    ours = onnx_attr.sensitivity_max(onnx_attr.Saliency(model), x, target=0, additional_forward_args=(add,),
                                     n_perturb_samples=3)
    from captum.metrics import sensitivity_max

    captum, module = _captum("MultiLayerAddInput")
    torch.manual_seed(0)
    theirs = sensitivity_max(captum.Saliency(module).attribute, x, target=0, additional_forward_args=(add,),
                             n_perturb_samples=3)
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-6)


def test_infidelity_hands_perturb_func_repeated_baselines():
    model = load("MultiLayer")
    x = T([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    baselines = T([[0.5, 0.5, 0.5], [1.0, 2.0, 3.0]])
    seen = {}

    def perturb(inputs, base):
        seen["shapes"] = (inputs.shape, base.shape)
        noise = torch.full_like(inputs, 0.1)
        return noise, inputs - noise

    attributions = onnx_attr.IntegratedGradients(model).attribute(x, baselines, target=0)
    ours = onnx_attr.infidelity(model, perturb, x, attributions, baselines=baselines, target=0, n_perturb_samples=4)
    assert seen["shapes"] == (torch.Size([8, 3]), torch.Size([8, 3]))
    from captum.metrics import infidelity

    theirs = infidelity(load("MultiLayer").module, perturb, x, attributions, baselines=baselines, target=0,
                        n_perturb_samples=4)
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-5)
    default = onnx_attr.infidelity(model, attributions, x, baselines=baselines, target=0)  # no raw RuntimeError
    assert default.shape == (2,)


# --- Occlusion --------------------------------------------------------------------------------

def test_occlusion_strides_per_input_and_bad_forms():
    occ = onnx_attr.Occlusion(load("MultiLayerMultiInput"))
    inputs = (_IN[0], _IN[1])
    # one stride per input: input 0 (window 3) with stride 2 is one window, as with stride 1
    a = occ.attribute(inputs, sliding_window_shapes=((3,), (1,)), strides=(2, 1), target=0,
                      additional_forward_args=(_IN[2], 1))
    b = occ.attribute(inputs, sliding_window_shapes=((3,), (1,)), strides=((1,), 1), target=0,
                      additional_forward_args=(_IN[2], 1))
    torch.testing.assert_close(a, b)
    bad = [dict(sliding_window_shapes=((3,), (1,)), strides=(2, 1, 2)),
           dict(sliding_window_shapes=((3,), (1,)), strides=((1, 1), 1)),
           dict(sliding_window_shapes=((1, 2), (1,))),
           dict(sliding_window_shapes=((4,), (1,))),
           dict(sliding_window_shapes=((1,), (1,)), strides=2),  # stride beyond the window
           dict(sliding_window_shapes=(1,))]
    for kwargs in bad:
        with pytest.raises(onnx_attr.OnnxAttrError):
            occ.attribute(inputs, target=0, additional_forward_args=(_IN[2], 1), **kwargs)


# --- FeatureAblation --------------------------------------------------------------------------

def test_feature_ids_are_ablated_per_input_not_across_inputs():
    """Definitional difference (docs/captum_differences.md): Captum ablates a feature id in every
    input at once; we ablate each input's groups on their own. By hand: output 0 is
    Σ_j relu(S + b_j) - 1 with S the sum of x1 + x2 + x3 (45 here) and b = [-10, 1, 1, 1], so
    while S ≥ 10 removing u from S lowers it by 4u. Captum would remove x1, x2[1] and x3[1]
    together for id 1 (4 × 19 = 76 for each of them)."""
    fa = onnx_attr.FeatureAblation(load("MultiLayerMultiInput"))
    masks = (T([[1, 1, 1]]), T([[0, 1, 2]]), T([[0, 1, 2]]))
    x = (T([[1.0, 2.0, 3.0]]), T([[4.0, 5.0, 6.0]]), T([[7.0, 8.0, 9.0]]))
    a1, a2, a3 = fa.attribute(x, additional_forward_args=(1,), feature_mask=masks, target=0)
    # output 0 = 4 * (sum s_i + 1) + ... with s = x1 + x2 + x3: sum s = 45, each unit of input moves
    # out0 by 4 (three ReLUs active, one with bias -10 also active here)
    torch.testing.assert_close(a1, T([[24.0, 24.0, 24.0]]))  # x1 sums to 6
    torch.testing.assert_close(a2, T([[16.0, 20.0, 24.0]]))
    torch.testing.assert_close(a3, T([[28.0, 32.0, 36.0]]))


def test_per_example_feature_masks_and_bad_masks():
    fa = onnx_attr.FeatureAblation(load("MultiLayer"))
    x = T([[2.0, 10.0, 3.0], [20.0, 50.0, 30.0]])
    got = fa.attribute(x, feature_mask=T([[0, 0, 1], [1, 1, 0]]), target=0)
    torch.testing.assert_close(got, T([[41.0, 41.0, 12.0], [280.0, 280.0, 120.0]]))
    named = onnx_attr.FeatureAblation(load("MultiLayerAddInput")).attribute(
        {"x": x, "add_input": torch.zeros(2, 3)}, target=0,
        feature_mask={"x": T([[0, 0, 1], [1, 1, 0]]), "add_input": T([[0, 0, 0]])})
    torch.testing.assert_close(named["x"], got)
    for mask in (T([[0, 0, 1], [1, 1, 0], [0, 0, 0]]), T([[0.5, 0, 1]]), T([[0, 1]]), "abc", (T([[0, 1, 2]]),) * 2):
        with pytest.raises(onnx_attr.OnnxAttrError):
            fa.attribute(x, feature_mask=mask, target=0)


def test_ablation_of_int_and_bool_inputs():
    got = onnx_attr.FeatureAblation(load("BasicModel_int")).attribute(np.array([[-3, 1, 2]]), target=0)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, [[-3, 0, 0]])
    flags = onnx_attr.Occlusion(load("BasicModelBoolInput")).attribute(T([[True, False, True]]),
                                                                       sliding_window_shapes=(1,), target=0)
    torch.testing.assert_close(flags, T([[40.0, 0.0, 40.0]]))


# --- DeepLift / DeepLiftShap ------------------------------------------------------------------

def test_deepliftshap_bad_baselines_are_clear():
    dls = onnx_attr.DeepLiftShap(load("ReLULinear"))
    inputs = (T([[-10.0, 1.0, -5.0]]), T([[3.0, 3.0, 1.0]]))
    for baselines in (0.0, (0.0, 1.0), lambda: 3.0, lambda xs: (0.0, 0.0), (torch.zeros(2, 3), torch.zeros(3, 3))):
        with pytest.raises(onnx_attr.OnnxAttrError):
            dls.attribute(inputs, baselines)


def test_deepliftshap_delta_per_pair_equals_captums():
    model = load("ReLULinear")
    inputs = (T([[-10.0, 1.0, -5.0], [2.0, 3.0, 4.0]]), T([[3.0, 3.0, 1.0], [2.3, 5.0, 4.0]]))
    baselines = (T([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, -1.0, 0.5]]),) * 2
    (a1, a2), delta = onnx_attr.DeepLiftShap(model).attribute(inputs, baselines, return_convergence_delta=True)
    captum, module = _captum("ReLULinear")
    (c1, c2), c_delta = captum.DeepLiftShap(module).attribute(inputs, baselines, return_convergence_delta=True)
    torch.testing.assert_close(a1, c1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a2, c2, rtol=1e-5, atol=1e-5)
    assert delta.shape == c_delta.shape == (6,)
    assert float(delta.abs().max()) < 1e-4


def test_custom_attribution_func_gets_multipliers_inputs_baselines():
    """Captum's semantics: the function's result replaces multiplier × Δx (here: the multipliers
    themselves, i.e. multiply_by_inputs=False, and 2 × the usual attributions)."""
    model = load("ReLULinear")
    inputs = (T([[-10.0, 1.0, -5.0]]), T([[3.0, 3.0, 1.0]]))
    dl = onnx_attr.DeepLift(model)
    plain = dl.attribute(inputs, (0.0, 0.0001))
    multipliers = onnx_attr.DeepLift(model, multiply_by_inputs=False).attribute(inputs, (0.0, 0.0001))
    only_m = dl.attribute(inputs, (0.0, 0.0001), custom_attribution_func=lambda m: m)
    doubled = dl.attribute(inputs, (0.0, 0.0001), custom_attribution_func=lambda m, x, b: tuple(
        2 * mm * (xx - bb) for mm, xx, bb in zip(m, x, b)))
    for a, b in zip(only_m, multipliers):
        torch.testing.assert_close(a, b)
    for a, b in zip(doubled, plain):
        torch.testing.assert_close(a, 2 * b)
    for func in (lambda: None, lambda m: None, 3):
        with pytest.raises(onnx_attr.OnnxAttrError):
            dl.attribute(inputs, (0.0, 0.0001), custom_attribution_func=func)


# --- baselines, targets, selectors, numpy -----------------------------------------------------

def test_baseline_broadcast_like_captum():
    model = load("MultiLayer")
    x = T([[20.0, 50.0, 30.0], [2.0, 10.0, 3.0]])
    per_row = T([[4.0], [6.0]])  # [2, 1] over [2, 3]
    ours = onnx_attr.IntegratedGradients(model).attribute(x, per_row, target=0)
    full = onnx_attr.IntegratedGradients(model).attribute(x, per_row.expand(2, 3), target=0)
    torch.testing.assert_close(ours, full)
    with pytest.raises(onnx_attr.OnnxAttrError):
        onnx_attr.IntegratedGradients(model).attribute(x, T([[1.0, 2.0]]), target=0)


def test_target_none_on_single_value_outputs_and_0d_output():
    model = load("ReLUDeepLift_4d")  # output [N, 1, 1, 1]
    x = (torch.ones(2, 1, 1, 1), torch.full((2, 1, 1, 1), 2.0))
    a1, a2 = onnx_attr.DeepLift(model).attribute(x)
    torch.testing.assert_close(a1, 2 * torch.ones(2, 1, 1, 1))
    torch.testing.assert_close(a2, torch.ones(2, 1, 1, 1))
    from onnx_attr.deeplift.engine import Targets

    with pytest.raises(onnx_attr.OnnxAttrError, match="0-d"):
        Targets(None, 2).select(torch.tensor(3.0))  # one value for two examples: no batch axis
    # one example's 0-d output is its value (an export squeezing [N, 1] drops N when it is 1)
    torch.testing.assert_close(Targets(None, 1).select(torch.tensor(3.0)), torch.tensor([3.0]))


def test_neuron_selectors_with_slices_and_callables():
    """Captum's neuron selectors: a tuple with slices sums the selected units, a callable gives
    them itself; both equal the sum of the single-unit attributions. A bad one is clear."""
    model = load("MultiLayer")
    x = T([[20.0, 50.0, 30.0], [2.0, 10.0, 3.0]])
    tensor = next(n.meta["onnx_tensor"] for n in model.module.graph.nodes
                  if n.meta.get("onnx_op") == "Relu")
    nig = onnx_attr.NeuronIntegratedGradients(model, tensor)
    singles = sum(nig.attribute(x, k) for k in (1, 2, 3))
    sliced = nig.attribute(x, (slice(1, 4),))
    called = nig.attribute(x, lambda h: h[:, 1:4].sum(1))
    torch.testing.assert_close(sliced, singles, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(called, singles, rtol=1e-5, atol=1e-4)
    summed = nig.attribute(x, lambda h: h[:, 1:4].sum())  # Captum's selectors may sum over the batch
    torch.testing.assert_close(summed, singles, rtol=1e-5, atol=1e-4)
    for selector in ((slice(0, 2), 3), (7,), lambda h: h[:1, 0], "unit"):
        with pytest.raises(onnx_attr.OnnxAttrError):
            nig.attribute(x, selector)


def test_numpy_in_numpy_out_everywhere():
    model = load("ReLULinear")
    inputs = (np.array([[-10.0, 1.0, -5.0]], np.float32), np.array([[3.0, 3.0, 1.0]], np.float32))
    dist = (np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32))
    relu = next(n.meta["onnx_tensor"] for n in model.module.graph.nodes if n.meta.get("onnx_op") == "Relu")
    results = [
        onnx_attr.GradientShap(model).attribute(inputs, dist, n_samples=3),
        onnx_attr.DeepLiftShap(model).attribute(inputs, dist),
        onnx_attr.NoiseTunnel(onnx_attr.Saliency(model)).attribute(inputs, nt_samples=2),
        onnx_attr.Occlusion(model).attribute(inputs, sliding_window_shapes=((1,), (1,))),
        (onnx_attr.LayerDeepLift(model, relu).attribute(inputs),),
    ]
    for result in results:
        assert all(isinstance(r, np.ndarray) for r in result), [type(r) for r in result]


# --- the CLI on a token-id model --------------------------------------------------------------

def test_cli_attributes_token_ids_with_every_method(tmp_path):
    """Every input method the CLI offers with an exact completeness identity attributes token ids at
    their embedding lookup (exit 0), and its per-token attributions add up to f(x) - f(baseline ids).
    (GradientShap's sum matches only in expectation; the registry contract test runs the others.)"""
    from exporting import TokenBag, to_onnx

    from onnx_attr.app.cli import main
    from onnx_attr.methods.registry import REGISTRY

    torch.manual_seed(0)
    bag = TokenBag()
    ids = torch.randint(1, 30, (2, 5))
    path = tmp_path / "bag.onnx"
    path.write_bytes(to_onnx(bag, ids, input_names=("ids",)))
    np.savez(tmp_path / "ids.npz", ids=ids.numpy())
    with torch.no_grad():
        change = (bag(ids) - bag(torch.zeros_like(ids))).numpy()
    exact = [n for n, e in REGISTRY.items() if e.cli and e.delta and not e.needs_layer and e.class_name not in ("GradientShap", "SplitIntegratedGradients")]  # Split IG: up to its split point
    assert {"deeplift", "integratedgradients"} <= set(exact)
    for method in exact:
        out = tmp_path / method
        baseline = [] if method == "lrp" else ["--baseline", "zeros"]  # LRP: relevance of f(x), no baseline
        assert main(["attribute", str(path), "--input", str(tmp_path / "ids.npz"), "--method", method,
                     *baseline, "--target", "1", "--out", str(out)]) == 0, method
        found = np.load(out / "attributions.npz")
        if method == "lrp":
            assert found["ids"].shape == tuple(ids.shape) and np.isfinite(found["ids"]).all()
            continue
        np.testing.assert_allclose(found["ids"].sum(1), change[:, 1], rtol=1e-4, atol=1e-5)


def test_captum_positional_orders_and_options(capsys, monkeypatch):
    """Captum's positional argument orders (neuron methods), `eps`, and `show_progress`."""
    from onnx_attr import progress

    monkeypatch.setattr(progress, "_is_terminal", lambda: True)  # the bar stays quiet off a terminal
    model = load("ReLULinear")
    inputs, base = (T([[-10.0, 1.0, -5.0]]), T([[3.0, 3.0, 1.0]])), (torch.zeros(1, 3), torch.zeros(1, 3))
    last = [n.meta["onnx_tensor"] for n in model.module.graph.nodes if n.meta.get("onnx_op") == "Gemm"][-1]
    a = onnx_attr.NeuronIntegratedGradients(model, last).attribute(inputs, 0, base, None, 64, "riemann_middle")
    torch.testing.assert_close(a[1], T([[6.0, 9.0, 0.0]]), rtol=1e-3, atol=1e-3)
    b = onnx_attr.NeuronDeepLift(model, last).attribute(inputs, 0, base, None, False, None)
    torch.testing.assert_close(b[1], T([[6.0, 9.0, 0.0]]))
    onnx_attr.DeepLift(model, True, 1e-10).attribute(inputs)
    onnx_attr.FeatureAblation(model).attribute(inputs, show_progress=True)
    assert "FeatureAblation" in capsys.readouterr().err
    with pytest.raises(onnx_attr.OnnxAttrError):
        onnx_attr.FeatureAblation(model).attribute(inputs, perturbations_per_eval=0)


class _Total(torch.nn.Module):
    def forward(self, x):
        return torch.relu(x).sum()


def test_a_0d_output_of_rows_reduced_together_is_one_examples_value():
    """relu(x).sum() over x [2, 3]: the rows [x, x/2, x] move the 0-d total, so they are reduced
    together and x is one whole example (a CTC decoder's score of one [time, features] sequence is
    the same graph). It was refused ("0-d, not one per example"); every method now explains the
    total. Oracle: the total by hand (completeness), the gradient by hand (Saliency: 1 where x > 0)."""
    from captum_models import export

    model = onnx_attr.load(export(_Total(), [torch.rand(2, 3)], ["x"]), strip_final_activation=False)
    x = torch.rand(2, 3) - 0.3
    total = float(torch.relu(x).sum())
    for method in (onnx_attr.DeepLift(model), onnx_attr.IntegratedGradients(model), onnx_attr.FeatureAblation(model)):
        attributions = method.attribute(x)
        assert attributions.shape == x.shape
        assert float(attributions.sum()) == pytest.approx(total, rel=1e-4)
    assert torch.equal(onnx_attr.Saliency(model).attribute(x), (x > 0).float())
    with pytest.raises(onnx_attr.OnnxAttrError, match=r"\(2, 3\)"):  # the window covers the whole example's axes
        onnx_attr.Occlusion(model).attribute(x, sliding_window_shapes=(1,))
    assert onnx_attr.Occlusion(model).attribute(x, sliding_window_shapes=(1, 1)).shape == x.shape


