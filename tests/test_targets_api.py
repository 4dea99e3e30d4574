"""Callable and mask targets in the API: one meaning across every method.

Oracle: Captum on the PyTorch original with the same target wrapped into its forward (the
wrapped model's single output per example needs no target), and the completeness identity
Σ attributions = f(x) − f(x0) for the chosen scalar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import DeepLift as CaptumDeepLift
from captum.attr import DeepLiftShap as CaptumDeepLiftShap
from captum.attr import FeatureAblation as CaptumFeatureAblation
from captum.attr import GradientShap as CaptumGradientShap
from captum.attr import InputXGradient as CaptumInputXGradient
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import Occlusion as CaptumOcclusion
from captum.attr import Saliency as CaptumSaliency
from torch import nn

import onnx_attr
from onnx_attr import Target

from exporting import to_onnx


class MapNet(nn.Module):
    """[N, 3, 8, 8] pixels 0–255 -> a one-channel score map [N, 1, 8, 8], as text detectors give."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 1, 3, padding=1))

    def forward(self, x):
        return self.body(x)


class Wrapped(nn.Module):
    """The target folded into the forward: one value per example, as Captum explains with target=None."""

    def __init__(self, net: nn.Module, pick):
        super().__init__()
        self.net, self.pick = net, pick

    def forward(self, x):
        return self.pick(self.net(x))


@pytest.fixture(scope="module")
def setting():
    net = MapNet().eval()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 255
    model = onnx_attr.load(to_onnx(net, x[:1]))
    mask = torch.zeros(1, 8, 8)
    mask[0, 2:6, 1:7] = 1.0  # a region
    weights = torch.linspace(-1.0, 2.0, 64).reshape(1, 8, 8)  # a weight map
    return net, model, x, mask, weights


def _masked(mask):
    return lambda out: (out * mask).flatten(1).sum(1)


def _tensor(value) -> torch.Tensor:
    return value.detach().double() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value)).double()


def _close(ours, theirs, scale, rtol=1e-4):
    ours, theirs = _tensor(ours), _tensor(theirs)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= rtol * scale, (ours - theirs).abs().max()


@pytest.mark.parametrize("form", ["mask", "bool mask", "weights", "callable", "numpy mask"])
def test_deeplift_mask_and_callable_targets_match_captum_on_the_wrapped_forward(setting, form):
    net, model, x, mask, weights = setting
    target, pick = {
        "mask": (mask, _masked(mask)),
        "bool mask": (mask.bool(), _masked(mask)),
        "weights": (Target(weights=weights), _masked(weights)),
        "callable": (_masked(weights), _masked(weights)),
        "numpy mask": (mask.numpy(), _masked(mask)),
    }[form]
    x0 = torch.full_like(x[:1], 128.0)  # a reference far from the inputs
    ours, delta = onnx_attr.DeepLift(model).attribute(x, x0, target=target, return_convergence_delta=True)
    theirs = CaptumDeepLift(Wrapped(net, pick)).attribute(x, x0.expand_as(x))
    change = (pick(net(x)) - pick(net(x0))).detach()
    _close(ours, theirs, change.abs().max())
    sums = _tensor(ours).flatten(1).sum(1)
    torch.testing.assert_close(sums, change.double(), atol=1e-4 * change.abs().max().item(), rtol=0)
    assert delta.abs().max() <= 1e-4 * change.abs().max()


def test_per_example_masks_pick_each_examples_own_region(setting):
    net, model, x, mask, _ = setting
    masks = torch.zeros(3, 1, 8, 8)
    masks[0, 0, :2] = 1.0
    masks[1, 0, 3:5, 3:5] = 1.0
    masks[2] = mask
    ours = onnx_attr.DeepLift(model).attribute(x, target=Target(weights=masks, per_example=True))
    for i in range(3):
        theirs = CaptumDeepLift(Wrapped(net, _masked(masks[i]))).attribute(x[i:i + 1], torch.zeros_like(x[:1]))
        change = (_masked(masks[i])(net(x[i:i + 1])) - _masked(masks[i])(net(torch.zeros_like(x[:1])))).detach()
        _close(ours[i:i + 1], theirs, change.abs().max())


@pytest.mark.parametrize("method", ["ig", "saliency", "inputxgradient", "gradientshap", "deepliftshap",
                                    "featureablation", "occlusion"])
def test_every_method_reads_a_mask_target_as_captum_reads_the_wrapped_forward(setting, method):
    net, model, x, mask, weights = setting
    wrapped = Wrapped(net, _masked(weights))
    target = Target(weights=weights)
    x0 = torch.full_like(x, 30.0)
    background = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 255
    if method == "ig":
        ours = onnx_attr.IntegratedGradients(model).attribute(x, x0, target=target, n_steps=20)
        theirs = CaptumIG(wrapped).attribute(x, x0, n_steps=20)
    elif method == "saliency":
        ours = onnx_attr.Saliency(model).attribute(x, target=target)
        theirs = CaptumSaliency(wrapped).attribute(x)
    elif method == "inputxgradient":
        ours = onnx_attr.InputXGradient(model).attribute(x, target=target)
        theirs = CaptumInputXGradient(wrapped).attribute(x)
    elif method == "gradientshap":
        torch.manual_seed(7), np.random.seed(7)
        ours = onnx_attr.GradientShap(model).attribute(x, background, n_samples=4, stdevs=1.0, target=target)
        torch.manual_seed(7), np.random.seed(7)
        theirs = CaptumGradientShap(wrapped).attribute(x, background, n_samples=4, stdevs=1.0)
    elif method == "deepliftshap":
        ours = onnx_attr.DeepLiftShap(model).attribute(x, background, target=target)
        theirs = CaptumDeepLiftShap(wrapped).attribute(x, background)
    elif method == "featureablation":
        groups = torch.arange(64).reshape(1, 1, 8, 8).expand(1, 3, 8, 8) // 4
        ours = onnx_attr.FeatureAblation(model).attribute(x, x0, target=target, feature_mask=groups)
        theirs = CaptumFeatureAblation(wrapped).attribute(x, x0, feature_mask=groups)
    else:
        ours = onnx_attr.Occlusion(model).attribute(x, (3, 2, 2), strides=(3, 2, 2), baselines=0.0, target=target)
        theirs = CaptumOcclusion(wrapped).attribute(x, (3, 2, 2), strides=(3, 2, 2), baselines=0.0)
    _close(ours, theirs, _tensor(theirs).abs().max(), rtol=2e-4)


def test_ig_keeps_completeness_for_a_nonlinear_callable(setting):
    """Any differentiable callable is a target for path methods: IG's delta is its quadrature error."""
    net, model, x, _, _ = setting
    pick = lambda out: torch.logsumexp(out.flatten(1) / 50.0, 1)  # noqa: E731
    ours, delta = onnx_attr.IntegratedGradients(model).attribute(x, target=pick, n_steps=64,
                                                                 return_convergence_delta=True)
    theirs = CaptumIG(Wrapped(net, pick)).attribute(x, n_steps=64)
    change = (pick(net(x)) - pick(net(torch.zeros_like(x)))).detach()
    _close(ours, theirs, theirs.abs().max(), rtol=1e-3)
    assert delta.abs().max() <= 1e-2 * change.abs().max()


def test_layer_neuron_noise_tunnel_and_metrics_read_the_same_mask(setting):
    """Methods with no Captum twin here: the mask target equals the callable that computes it."""
    _, model, x, mask, weights = setting
    x0 = torch.full_like(x[:1], 128.0)
    mask_target, callable_target = Target(weights=weights), _masked(weights)
    layer = onnx_attr.LayerIntegratedGradients(model, model.onnx_model.graph.node[1].output[0])
    a, d = layer.attribute(x, x0, target=mask_target, n_steps=32, return_convergence_delta=True)
    b = layer.attribute(x, x0, target=callable_target, n_steps=32)
    torch.testing.assert_close(torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b)))
    nt = onnx_attr.NoiseTunnel(onnx_attr.Saliency(model))
    torch.manual_seed(3)
    a = nt.attribute(x, nt_samples=3, stdevs=2.0, target=Target(weights=weights.expand(3, 1, 8, 8),
                                                                     per_example=True))
    torch.manual_seed(3)
    b = nt.attribute(x, nt_samples=3, stdevs=2.0, target=callable_target)
    torch.testing.assert_close(a, b)
    attributions = onnx_attr.Saliency(model).attribute(x, target=mask, abs=False)
    torch.manual_seed(4)
    a = onnx_attr.infidelity(model, lambda t: (torch.ones_like(t), t - 1.0), x, attributions, target=mask)
    torch.manual_seed(4)
    b = onnx_attr.infidelity(model, lambda t: (torch.ones_like(t), t - 1.0), x, attributions, target=_masked(mask))
    torch.testing.assert_close(a, b)


def test_an_index_on_a_time_major_output_picks_each_examples_step(setting):
    """[T, N, C]: Target(index=(t, c), batch_axis=1) is out[t, i, c]; DeepLift completes it, IG agrees."""
    torch.manual_seed(2)

    class TimeMajor(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.act = nn.Linear(6, 5), nn.Tanh()  # a module, so that Captum's DeepLift sees it

        def forward(self, x):  # [N, T, 6] -> [T, N, 5]
            return self.act(self.proj(x)).permute(1, 0, 2) * 40.0

    net = TimeMajor().eval()
    x = torch.randn(3, 7, 6) * 3
    model = onnx_attr.load(to_onnx(net, x[:2]))
    target = Target(index=(4, 2), batch_axis=1)
    ours, delta = onnx_attr.DeepLift(model).attribute(x, target=target, return_convergence_delta=True)
    change = (net(x)[4, :, 2] - net(torch.zeros_like(x))[4, :, 2]).detach().double()
    sums = _tensor(ours).flatten(1).sum(1)
    torch.testing.assert_close(sums, change, atol=1e-4 * change.abs().max().item(), rtol=0)
    assert ours[:, :4].abs().max() == 0 and ours[:, 5:].abs().max() == 0  # only step 4 feeds it
    theirs = CaptumDeepLift(Wrapped(net, lambda out: out[4, :, 2])).attribute(x, torch.zeros_like(x))
    _close(ours, theirs, change.abs().max())
    # per-example masks on the time-major output (a path per example), through IG's stacked steps
    masks = torch.zeros(3, 7, 5)
    masks[torch.arange(3)[:, None], torch.arange(7)[None, :], torch.tensor([[0], [3], [4]])] = 1.0
    # Captum runs its steps stacked on the batch: the masks follow, step after step
    pick = lambda out: (out.permute(1, 0, 2) * masks.repeat(out.shape[1] // 3, 1, 1)).flatten(1).sum(1)  # noqa: E731
    ours = onnx_attr.IntegratedGradients(model).attribute(
        x, target=Target(weights=masks, per_example=True, batch_axis=1), n_steps=32, internal_batch_size=24)
    theirs = CaptumIG(Wrapped(net, pick)).attribute(x, n_steps=32)
    _close(ours, theirs, _tensor(theirs).abs().max())


def test_bad_targets_are_clear_errors(setting):
    _, model, x, mask, _ = setting
    with pytest.raises(onnx_attr.InputError, match="shape of one example's output"):
        onnx_attr.DeepLift(model).attribute(x, target=torch.ones(8, 8))
    with pytest.raises(onnx_attr.InputError, match="3 mask"):
        onnx_attr.Saliency(model).attribute(x, target=Target(weights=mask, per_example=True))
    with pytest.raises(onnx_attr.InputError, match="not both"):
        Target(index=1, weights=mask)
    with pytest.raises(onnx_attr.InputError, match="batch_axis is 5"):
        onnx_attr.Saliency(model).attribute(x, target=Target(index=0, batch_axis=5))


def test_an_index_on_a_time_major_output_is_read_on_the_batch_axis_the_graph_gives_else_refused():
    """A [T, N, C] output declares its batch symbol on axis 1, so a plain index is read there (as
    Target(batch_axis=1) reads it); a batch_axis named wrong (0: T rows for N examples) is an error
    naming batch_axis, never a silent explanation of its first time step (issue 18's CRNN)."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU())
    model = onnx_attr.load(to_onnx(_TimeMajorOf(net), torch.randn(1, 7, 6)))
    x = torch.randn(1, 7, 6)
    named = onnx_attr.DeepLift(model).attribute(x, target=Target(index=(3, 2), batch_axis=1))
    assert named[:, 3].abs().sum() > 0 and named[:, :3].abs().sum() == 0 and named[:, 4:].abs().sum() == 0
    torch.testing.assert_close(onnx_attr.DeepLift(model).attribute(x, target=(3, 2)), named)
    path, delta = onnx_attr.IntegratedGradients(model).attribute(x, target=(3, 2), n_steps=64,
                                                                 return_convergence_delta=True)
    assert path[:, :3].abs().sum() == 0 and path[:, 4:].abs().sum() == 0
    with torch.no_grad():
        change = float(net(x)[0, 3, 2] - net(torch.zeros_like(x))[0, 3, 2])  # the explained value: step 3, class 2
    assert abs(float(named.sum()) - change) < 1e-5
    assert abs(float(path.sum()) - change) < 0.05 * abs(change) and abs(float(delta)) < 0.05 * abs(change)
    with pytest.raises(onnx_attr.InputError, match="batch_axis"):
        onnx_attr.DeepLift(model).attribute(x, target=Target(index=(0, 2), batch_axis=0))


class _TimeMajorOf(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):  # [N, T, F] -> [T, N, C]
        return self.net(x).permute(1, 0, 2)
