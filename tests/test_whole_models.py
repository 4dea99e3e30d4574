"""Whole real architectures end to end: export, import, verify, DeepLift with relative delta <= 1e-4.

Random-initialised with fixed seeds; BatchNorm running statistics are set from forward passes on
random batches and every Linear is re-initialised with unit-scale weights, so that the logits
depend on the input. resnet18, the ViT and a ConvNeXt-style block stack run by default; the rest
are marked slow.

The relative delta is |Σ attributions - Δf| / max(|Δf|, eps32 / 1e-4): relative to the change
itself, floored only where the change is at float32's rounding of outputs near 1 (a floor of 1
would hide errors as large as the change wherever |Δf| < 1, as with probabilities).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlock, LayerNorm2d

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
    assert relative(delta, change).max() <= 1e-4, relative(delta, change)
    assert dl.engine.rewrite.rewritten and not dl.engine.rewrite.fallback


def relative(delta, change) -> torch.Tensor:
    return delta.double().abs() / change.double().abs().clamp_min(torch.finfo(torch.float32).eps / 1e-4)


def convnext_blocks(softmax: bool) -> nn.Module:
    """The ConvNeXt pattern: patchify stem, channels-first LayerNorm, blocks of depthwise conv ->
    channels-last LayerNorm (Transpose -> LayerNormalization -> Transpose) -> pointwise MatMul ->
    GELU -> MatMul -> layer scale -> residual add, a downsampling LayerNorm + conv, a pooled
    LayerNorm head; convnext_tiny's first widths (96, 192), LayerNorm eps 1e-6 and layer-scale init
    1e-6. Before the normalisations' split was ordered, pixels gave a relative delta of 1.5e-4."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 96, 4, 4), LayerNorm2d(96, eps=1e-6), CNBlock(96, 1e-6, 0.0), CNBlock(96, 1e-6, 0.0),
              LayerNorm2d(96, eps=1e-6), nn.Conv2d(96, 192, 2, 2), CNBlock(192, 1e-6, 0.0),
              nn.AdaptiveAvgPool2d(1), LayerNorm2d(192, eps=1e-6), nn.Flatten(1), nn.Linear(192, 10)]
    return nn.Sequential(*layers, *([nn.Softmax(-1)] if softmax else [])).eval()


def exported(model: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    """torch.onnx.export's TorchScript exporter: opset 17 writes GELU as Erf, opset 20 as `Gelu`."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, opset_version=opset, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    return buffer.getvalue()


IMAGES = {"normalised": lambda gen: torch.randn(2, 3, 32, 32, generator=gen),
          "pixels": lambda gen: torch.rand(2, 3, 32, 32, generator=gen) * 255}


def check_images(data: bytes, keep_final_activation: bool, expect_ops: set[str]) -> None:
    import onnx

    assert expect_ops <= {n.op_type for n in onnx.load_from_string(data).graph.node}
    imported = onnx_attr.load(data, strip_final_activation=not keep_final_activation)
    dl = onnx_attr.DeepLift(imported)
    gen = torch.Generator().manual_seed(1)
    for name, draw in IMAGES.items():
        x = draw(gen)
        zero = torch.zeros(1, 3, 32, 32)
        _, delta = dl.attribute(x, zero, target=[1, 4], return_convergence_delta=True)
        change = imported.run(x)[0][[0, 1], [1, 4]].double() - imported.run(zero)[0][0, [1, 4]].double()
        assert change.abs().min() > 1e-4, f"{name}: the output barely depends on the input"
        assert relative(delta, change).max() <= 1e-4, (name, relative(delta, change))
        assert dl.last_report["max_relative_delta"] <= 1e-4, (name, dl.last_report)
        assert not dl.engine.rewrite.fallback


@pytest.mark.parametrize("opset", [17, pytest.param(20, marks=pytest.mark.slow)])
@pytest.mark.parametrize("keep_final_activation", [False, True], ids=["stripped", "kept"])
def test_convnext_style_blocks_at_image_scale(opset, keep_final_activation):
    """Pixels in 0-255 and normalised images against a zero baseline: the LayerNorms then see a
    near-constant reference (1/σ0 ~ 1/√eps) and the softmax logits tens apart."""
    data = exported(convnext_blocks(softmax=True), torch.randn(1, 3, 32, 32), opset)
    check_images(data, keep_final_activation, {"LayerNormalization", "Transpose", "Erf" if opset == 17 else "Gelu"})


@pytest.mark.slow
@pytest.mark.parametrize("opset", [17, 20])
def test_convnext_tiny(opset):
    """torchvision's convnext_tiny, random-initialised (seed 0), exported as is."""
    torch.manual_seed(0)
    model = tv.convnext_tiny(num_classes=10).eval()
    data = exported(nn.Sequential(model, nn.Softmax(-1)).eval(), torch.randn(1, 3, 32, 32), opset)
    check_images(data, False, {"LayerNormalization", "Erf" if opset == 17 else "Gelu"})


def test_digits_sample_with_its_softmax_kept():
    """The bundled sample explained through its final Softmax (the CLI's --keep-final-activation)."""
    root = Path(__file__).resolve().parents[1] / "samples"
    imported = onnx_attr.load(root / "digits_cnn.onnx", strip_final_activation=False)
    inputs = dict(np.load(root / "digits_cnn_inputs.npz"))
    x = torch.from_numpy(next(iter(inputs.values())))
    dl = onnx_attr.DeepLift(imported)
    baseline = torch.zeros_like(x[:1])
    probabilities = imported.run(x)[0]
    target = probabilities.argmax(1)
    _, delta = dl.attribute(x, baseline, target=target, return_convergence_delta=True)
    rows = torch.arange(len(target))
    change = probabilities[rows, target].double() - imported.run(baseline.expand_as(x))[0][rows, target].double()
    assert relative(delta, change).max() <= 1e-4, relative(delta, change)
