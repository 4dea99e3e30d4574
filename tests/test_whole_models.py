"""Whole real architectures end to end: export, import, verify, DeepLift with relative delta <= 1e-4.

Random-initialised with fixed seeds; BatchNorm running statistics are set from forward passes on
random batches and every Linear is re-initialised with unit-scale weights, so that the logits
depend on the input. resnet18 and the ViT run by default; the rest are marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import onnx_attr

from exporting import to_onnx

tv = torchvision.models


def _vit():
    return tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                                num_classes=10)


ARCHITECTURES = {
    "resnet18": (lambda: tv.resnet18(num_classes=10), []),
    "vit_small": (_vit, []),
    "mobilenet_v2": (lambda: tv.mobilenet_v2(num_classes=10), [pytest.mark.slow]),
    "mobilenet_v3_small": (lambda: tv.mobilenet_v3_small(num_classes=10), [pytest.mark.slow]),
    "efficientnet_b0": (lambda: tv.efficientnet_b0(num_classes=10), [pytest.mark.slow]),
    "shufflenet_v2": (lambda: tv.shufflenet_v2_x0_5(num_classes=10), [pytest.mark.slow]),
}


def prepared(build) -> nn.Module:
    torch.manual_seed(0)
    model = build()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features ** -0.5)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average of the calibration batches' statistics
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize("name", [pytest.param(n, marks=m) for n, (_, m) in ARCHITECTURES.items()])
def test_architecture_end_to_end(name):
    model = prepared(ARCHITECTURES[name][0])
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 32, 32, generator=gen)
    imported = onnx_attr.load(to_onnx(model, x))
    report = imported.verify(x.numpy())
    assert report.passed, report.format()
    with torch.no_grad():
        expected = model(x).numpy()
    scale = max(1.0, float(np.abs(expected).max()))  # float32 sums over deep graphs: relative to the logits
    np.testing.assert_allclose(imported.run(x)[0].numpy(), expected, rtol=0, atol=1e-4 * scale)
    baseline = torch.randn(1, 3, 32, 32, generator=gen) * 0.1
    dl = onnx_attr.DeepLift(imported)
    attributions, delta = dl.attribute(x, baseline, target=[1, 4, 7], return_convergence_delta=True)
    change = imported.run(x)[0][[0, 1, 2], [1, 4, 7]] - imported.run(baseline)[0][0, [1, 4, 7]]
    assert change.abs().min() > 1e-3, "the logits barely depend on the input: the check would be vacuous"
    relative = delta.abs() / change.double().abs().clamp_min(1.0)
    assert relative.max() <= 1e-4, relative
    assert dl.engine.rewrite.rewritten and not dl.engine.rewrite.fallback
