"""Each attribution method's time as a ratio to one plain forward+backward of the same batch, ours
beside Captum's on the same imported module.

    python benchmarks/methods.py [--device cuda] [--batch 16]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import onnx_attr  # noqa: E402
from deeplift import load, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import captum.attr as captum

    device = torch.device(args.device)
    model, shape = load(args.model, args.size)
    model.to(device)
    module = model.module
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, *shape, generator=gen).to(device)
    base = torch.zeros(1, *shape, device=device)
    dist = torch.randn(4, *shape, generator=gen).to(device) * 0.1
    target = 1

    def plain():
        xg = x.detach().requires_grad_(True)  # the gradient w.r.t. the input only, as the methods take it
        torch.autograd.grad(module(xg)[:, target].sum(), xg)

    layer = next(n.output[0] for n in model.onnx_model.graph.node if n.op_type == "Relu")
    layer_module = next(m for m in module.modules() if type(m).__name__ == "ReLU")  # the same first Relu
    window = (shape[0], max(1, shape[1] // 4), max(1, shape[2] // 4))
    stride = (shape[0], window[1], window[2])
    cases = [
        ("Saliency", lambda: onnx_attr.Saliency(model).attribute(x, target=target),
         lambda: captum.Saliency(module).attribute(x, target=target)),
        ("InputXGradient", lambda: onnx_attr.InputXGradient(model).attribute(x, target=target),
         lambda: captum.InputXGradient(module).attribute(x, target=target)),
        ("DeepLift", lambda: onnx_attr.DeepLift(model).attribute(x, base, target=target),
         lambda: captum.DeepLift(module).attribute(x, base.expand_as(x), target=target)),
        ("DeepLift RevealCancel", lambda: onnx_attr.DeepLift(model, rule="revealcancel").attribute(
            x, base, target=target), None),
        ("LayerDeepLift", lambda: onnx_attr.LayerDeepLift(model, layer).attribute(x, base, target=target),
         lambda: captum.LayerDeepLift(module, layer_module).attribute(x, base.expand_as(x), target=target)),
        ("LayerIG (16 steps)", lambda: onnx_attr.LayerIntegratedGradients(model, layer).attribute(
            x, base, target=target, n_steps=16),
         lambda: captum.LayerIntegratedGradients(module, layer_module).attribute(
            x, base.expand_as(x), target=target, n_steps=16)),
        ("NeuronDeepLift", lambda: onnx_attr.NeuronDeepLift(model, layer).attribute(x, (0, 1, 1), base),
         lambda: captum.NeuronDeepLift(module, layer_module).attribute(x, (0, 1, 1), base.expand_as(x))),
        ("IG (16 GL steps)", lambda: onnx_attr.IntegratedGradients(model).attribute(x, base, target=target, n_steps=16),
         lambda: captum.IntegratedGradients(module).attribute(x, base.expand_as(x), target=target, n_steps=16)),
        ("GradientShap", lambda: onnx_attr.GradientShap(model).attribute(x, dist, target=target),
         lambda: captum.GradientShap(module).attribute(x, dist, target=target)),
        ("NoiseTunnel(Sal.)", lambda: onnx_attr.NoiseTunnel(onnx_attr.Saliency(model)).attribute(x, target=target),
         lambda: captum.NoiseTunnel(captum.Saliency(module)).attribute(x, target=target)),
        ("Occlusion", lambda: onnx_attr.Occlusion(model).attribute(x, window, strides=stride, target=target,
                                                                   perturbations_per_eval=16),
         lambda: captum.Occlusion(module).attribute(x, window, strides=stride, target=target,
                                                    perturbations_per_eval=16)),
    ]
    base_time = timed(plain, device, args.repeats)
    print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}, device {device}; one forward+backward "
          f"{base_time * 1e3:.2f} ms; ratios to it (median of {args.repeats})")
    print(f"{'method':<24}{'ours':>8}{'captum':>9}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, ours, theirs in cases:
            mine = timed(ours, device, args.repeats) / base_time
            other = "—" if theirs is None else f"{timed(theirs, device, args.repeats) / base_time:.2f}"
            print(f"{name:<24}{mine:>8.2f}{other:>9}")


if __name__ == "__main__":
    main()
