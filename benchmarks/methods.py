"""Each attribution method's time as a ratio to one plain forward+backward of the same batch, ours
beside Captum's on the same imported module; then IG's convergence at batch 2: Captum's IG at
8/16/32/64 Gauss-Legendre steps against AdaptiveIntegratedGradients and SplitIntegratedGradients
(time and largest relative delta |Σφ − Δf| / |Δf|; for Split IG, Δf up to its split point), at
each size of --ig-sizes, beside a many-step trapezoid reference that shows how many steps the path
really needs (a random-initialised resnet18's path derivative is rough: a step function with
hundreds of ReLU switches between neighbouring steps, so every quadrature's error falls only
about as 1/steps there, wherever the steps are placed).

    python benchmarks/methods.py [--device cuda] [--batch 16] [--size 32] [--ig-sizes 32,96] [--ig-only]
"""

from __future__ import annotations

import argparse
import sys
import time
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
    parser.add_argument("--ig-sizes", default=None, help="image sizes of the IG convergence table (default: --size)")
    parser.add_argument("--ig-repeats", type=int, default=None, help="timing repeats there (default: --repeats)")
    parser.add_argument("--reference-steps", type=int, default=512,
                        help="trapezoid steps of the reference IG row (0: none)")
    parser.add_argument("--ig-only", action="store_true", help="only the IG convergence table")
    args = parser.parse_args()
    device = torch.device(args.device)
    if not args.ig_only:
        ratios(args, device)
    for size in [int(s) for s in (args.ig_sizes or str(args.size)).split(",")]:
        model, shape = load(args.model, size)
        model.to(device)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, *shape, generator=gen).to(device)[:2]  # the same rows as the ratio table's
        base = torch.zeros(1, *shape, device=device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            convergence(model, model.module, x, base, 1, device, args.ig_repeats or args.repeats,
                        args.reference_steps, f"{args.model} {size}x{size}")


def ratios(args, device: torch.device) -> None:
    """Each method's time over one plain forward+backward, ours and Captum's."""
    import captum.attr as captum

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
    patches = _patches(shape, 4)  # 16 square patches per channel-stack: the features of the sampling methods
    small = x[:2]
    cases += [
        ("ShapleyValueSampling", lambda: onnx_attr.ShapleyValueSampling(model).attribute(
            small, base, target=target, feature_mask=patches, n_samples=2, perturbations_per_eval=16),
         lambda: captum.ShapleyValueSampling(module).attribute(small, base, target=target, feature_mask=patches,
                                                               n_samples=2, perturbations_per_eval=16)),
        ("KernelShap (64)", lambda: onnx_attr.KernelShap(model).attribute(
            small, base, target=target, feature_mask=patches, n_samples=64, perturbations_per_eval=16),
         lambda: captum.KernelShap(module).attribute(small, base, target=target, feature_mask=patches, n_samples=64,
                                                     perturbations_per_eval=16)),
        ("Lime (64)", lambda: onnx_attr.Lime(model).attribute(
            small, base, target=target, feature_mask=patches, n_samples=64, perturbations_per_eval=16),
         lambda: captum.Lime(module).attribute(small, base, target=target, feature_mask=patches, n_samples=64,
                                               perturbations_per_eval=16)),
        ("FeaturePermutation", lambda: onnx_attr.FeaturePermutation(model).attribute(
            x, target=target, feature_mask=patches, perturbations_per_eval=16),
         lambda: captum.FeaturePermutation(module).attribute(x, target=target, feature_mask=patches,
                                                             perturbations_per_eval=16)),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fns = {"plain": plain}
        for name, ours, theirs in cases:
            fns[f"ours {name}"] = ours
            if theirs is not None:
                fns[f"captum {name}"] = theirs
        times = timed(fns, device, args.repeats)
        base_time = times["plain"]
        print(f"{args.model}, batch {args.batch}, {args.size}x{args.size}, device {device}; one forward+backward "
              f"{base_time * 1e3:.2f} ms; ratios to it (median of {args.repeats}; the sampling methods on 2 "
              "examples)")
        print(f"{'method':<24}{'ours':>8}{'captum':>9}")
        for name, _, theirs in cases:
            other = "—" if theirs is None else f"{times[f'captum {name}'] / base_time:.2f}"
            print(f"{name:<24}{times[f'ours {name}'] / base_time:>8.2f}{other:>9}")


def _patches(shape, per_side: int) -> torch.Tensor:
    """Feature ids of per_side × per_side square patches, each across all channels: [1, C, H, W]."""
    _, h, w = shape
    rows = torch.arange(h) * per_side // h
    cols = torch.arange(w) * per_side // w
    return (rows[:, None] * per_side + cols[None, :]).expand(1, shape[0], h, w).contiguous()


def convergence(model, module, x, base, target, device, repeats: int, reference_steps: int, title: str) -> None:
    """Issue 20's IG figure: time and largest relative delta of Captum's IG at 8/16/32/64 GL steps
    against the adaptive and split variants on the same batch, then our IG at `reference_steps`
    trapezoid steps (timed once) and, for the adaptive run, its error bound Σ|local delta| / |Δf|."""
    import captum.attr as captum

    with torch.no_grad():
        change = (module(x)[:, target] - module(base.expand_as(x))[:, target]).double().cpu()
    results = {}

    def captum_ig(steps):
        def run():
            results[f"Captum IG ({steps} GL)"] = captum.IntegratedGradients(module).attribute(
                x, base.expand_as(x), target=target, n_steps=steps, return_convergence_delta=True)[1]
        return run

    adaptive = onnx_attr.AdaptiveIntegratedGradients(model)
    split = onnx_attr.SplitIntegratedGradients(model)

    def ours_adaptive():
        results["AdaptiveIG (≤64 points)"] = adaptive.attribute(x, base, target=target, n_steps=64, tolerance=1e-2,
                                                               return_convergence_delta=True)[1]

    def ours_split():
        results["SplitIG (64 GL)"] = split.attribute(x, base, target=target, n_steps=64,
                                                     return_convergence_delta=True)[1]

    fns = {**{f"Captum IG ({s} GL)": captum_ig(s) for s in (8, 16, 32, 64)},
           "AdaptiveIG (≤64 points)": ours_adaptive, "SplitIG (64 GL)": ours_split}
    times = timed(fns, device, repeats)
    if reference_steps:
        name = f"IG ({reference_steps} trapezoid)"
        start = time.perf_counter()
        results[name] = onnx_attr.IntegratedGradients(model).attribute(
            x, base, target=target, n_steps=reference_steps, method="riemann_trapezoid", internal_batch_size=128,
            return_convergence_delta=True)[1]
        if device.type == "cuda":
            torch.cuda.synchronize()
        times[name] = time.perf_counter() - start
    covered = {"SplitIG (64 GL)": torch.tensor(split.last_report["integrated_change"], dtype=torch.float64)}
    print(f"\nIG convergence, {title}, batch {len(x)}, device {device}: seconds (median of {repeats}; the "
          "reference timed once), ratio to Captum's 64 GL steps, largest relative delta")
    for name in times:
        delta = results[name].double().cpu()
        relative = (delta.abs() / covered.get(name, change).abs()).max().item()
        print(f"{name:<26}{times[name]:>8.3f} s{times[name] / times['Captum IG (64 GL)']:>7.2f}x{relative:>11.2e}")
    report = adaptive.last_report
    print(f"Adaptive IG: gradient points per example {report['gradient_points']}, rounds {report['rounds']}, "
          f"error bound Σ|local delta| / |Δf| {[f'{b:.2e}' for b in report['error_bound']]}; Split IG split points "
          f"{[round(a, 3) for a in split.last_report['split_points']]}")


if __name__ == "__main__":
    main()
