"""target=None on an output with several values per example, as Captum's perturbation methods read
it: every value explained from the same passes. FeatureAblation's family returns [N·K, *input
shape], the Shapley methods [N, *output shape, *input shape]; Captum itself is the oracle, on the
module that was exported, at logits in the hundreds."""

from __future__ import annotations

import pytest
import torch

import onnx_attr
from onnx_attr.errors import InputError

captum_attr = pytest.importorskip("captum.attr")


class Heads(torch.nn.Module):
    """Two linear heads [N, 2, 3] from a small net: nine values per example."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, 6)

    def forward(self, x):
        return self.head(self.body(x) * 40.0).reshape(x.shape[0], 2, 3)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    module = Heads().eval()
    path = tmp_path_factory.mktemp("every_value") / "heads.onnx"
    torch.onnx.export(module, torch.randn(2, 4), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, dynamo=False)
    return module, onnx_attr.load(str(path))


CASES = [
    ("FeatureAblation", {}, (3 * 6, 4)),
    ("FeatureAblation", {"feature_mask": torch.tensor([[0, 0, 1, 2]])}, (3 * 6, 4)),
    ("Occlusion", {"sliding_window_shapes": (2,)}, (3 * 6, 4)),
    ("FeaturePermutation", {}, (3 * 6, 4)),
    ("ShapleyValues", {}, (3, 2, 3, 4)),
    ("ShapleyValueSampling", {"n_samples": 5, "perturbations_per_eval": 4}, (3, 2, 3, 4)),
]


@pytest.mark.parametrize("name, options, shape", CASES, ids=[c[0] + str(i) for i, c in enumerate(CASES)])
def test_every_value_equals_captum(heads, name, options, shape):
    module, model = heads
    x = torch.tensor([[30.0, -80.0, 12.0, 150.0], [-5.0, 60.0, 90.0, -40.0], [200.0, 3.0, -70.0, 8.0]])
    torch.manual_seed(7)
    ours = getattr(onnx_attr, name)(model).attribute(x, **options)
    torch.manual_seed(7)
    theirs = getattr(captum_attr, name)(module).attribute(x, **options)
    assert tuple(ours.shape) == tuple(theirs.shape) == shape
    assert torch.allclose(ours, theirs.to(ours.dtype), rtol=1e-4, atol=1e-3 * float(theirs.abs().max()))


def test_every_value_is_each_value_explained_alone(heads):
    """Row e·K + k of FeatureAblation's answer is the attribution of value k of example e, as a call
    with that target gives it (the same drops, read per value)."""
    _, model = heads
    x = torch.tensor([[30.0, -80.0, 12.0, 150.0], [-5.0, 60.0, 90.0, -40.0]])
    every = onnx_attr.FeatureAblation(model).attribute(x).reshape(2, 2, 3, 4)
    for i in range(2):
        for j in range(3):
            alone = onnx_attr.FeatureAblation(model).attribute(x, target=(i, j))
            assert torch.equal(every[:, i, j], alone)


def test_surrogates_still_need_one_value_per_example(heads):
    """Captum's KernelShap and Lime refuse several values per example; so does onnx-attr, clearly."""
    _, model = heads
    x = torch.ones(1, 4)
    for cls in (onnx_attr.KernelShap, onnx_attr.Lime):
        with pytest.raises(InputError, match="one value per example"):
            cls(model).attribute(x, n_samples=10)
