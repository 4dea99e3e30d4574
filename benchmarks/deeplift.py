"""DeepLift cost against a plain gradient and against Captum, on the same imported module.

    python benchmarks/deeplift.py [--device cuda] [--models resnet18,mobilenet_v2,digits] [--batch 16] [--shap 8]

For each model: the median time of a plain forward+backward (gradient of the target logit
w.r.t. the input), of onnx_attr.DeepLift, and of captum.attr.DeepLift on the same fx
GraphModule (Captum hooks the modules it knows), all on the same batch and device; then the
ratios, and each method's largest relative convergence delta on that batch (Captum is fast
where it silently skips modules it does not know, and its delta shows it). Needs the test
extras (captum, torchvision, onnxscript).

With --shap K, a second table: DeepLiftShap over K background rows (reused over batches, as
over a dataset) against Captum's DeepLiftShap on the same module and against K plain gradients.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import onnx_attr  # noqa: E402


def _export(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model.eval(), (x,), input_names=["x"], opset_version=18, dynamo=True,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    program.save(buffer)
    return buffer.getvalue()


def _torchvision(name: str, size: int):
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, size, size))
    return onnx_attr.load(_export(model.eval(), torch.randn(2, 3, size, size)))


def load(name: str, size: int):
    if name == "digits":
        return onnx_attr.load(ROOT / "samples" / "digits_cnn.onnx"), (1, 8, 8)
    return _torchvision(name, size), (3, size, size)


def timed(fns: dict, device: torch.device, repeats: int) -> dict:
    """Median seconds of each function, run round-robin so that drift in the machine's speed
    (shared CPUs, clocks) falls on every method alike, not on whichever ran last."""
    for fn in fns.values():
        fn()  # warm-up (allocations, cuDNN autotuning)
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench(name: str, device: torch.device, batch: int, size: int, repeats: int) -> dict:
    model, shape = load(name, size)
    model.to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=gen).to(device)
    baseline = torch.zeros(1, *shape, device=device)
    target = 1
    module = model.module

    def plain():
        xg = x.detach().requires_grad_(True)  # the gradient w.r.t. the input only, as the methods take it
        torch.autograd.grad(module(xg)[:, target].sum(), xg)

    explainer = onnx_attr.DeepLift(model)

    def ours():
        explainer.attribute(x, baseline, target=target)

    def ours_cold():  # the reference pass re-run every call, as for a new baseline each time
        explainer.engine.references.clear()
        explainer.attribute(x, baseline, target=target)

    ours()
    our_delta = explainer.last_report["max_relative_delta"]
    fns = {"plain_s": plain, "ours_s": ours, "cold_s": ours_cold}
    row = {"model": name, "batch": batch, "ours_delta": our_delta, "captum_delta": float("nan"),
           "captum_s": float("nan")}
    try:
        from captum.attr import DeepLift as CaptumDeepLift

        captum = CaptumDeepLift(module)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, delta = captum.attribute(x, baseline.expand_as(x), target=target, return_convergence_delta=True)
        with torch.no_grad():
            change = (module(x)[:, target] - module(baseline)[:, target]).abs().clamp_min(1.0)
        row["captum_delta"] = float((delta.abs() / change).max())

        def captum_run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                captum.attribute(x, baseline.expand_as(x), target=target)

        fns["captum_s"] = captum_run
    except Exception as err:  # Captum cannot run every imported graph (that is the point of this tool)
        row["captum_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"
    row.update(timed(fns, device, repeats))
    return row


def bench_shap(name: str, device: torch.device, batch: int, size: int, repeats: int, rows: int) -> dict:
    model, shape = load(name, size)
    model.to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=gen).to(device)
    background = torch.randn(rows, *shape, generator=gen).to(device)
    module, target = model.module, 1

    def plain():
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(module(xg)[:, target].sum(), xg)

    explainer = onnx_attr.DeepLiftShap(model)
    fns = {"plain_s": plain, "ours_s": lambda: explainer.attribute(x, background, target=target)}
    row = {"model": name, "captum_s": float("nan")}
    try:
        from captum.attr import DeepLiftShap as CaptumDeepLiftShap

        captum = CaptumDeepLiftShap(module)

        def captum_run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                captum.attribute(x, background, target=target)

        captum_run()
        fns["captum_s"] = captum_run
    except Exception as err:
        row["captum_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"
    row.update(timed(fns, device, max(3, repeats // 4)))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="digits,resnet18,mobilenet_v2")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="image side for the torchvision models")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--shap", type=int, default=0, metavar="K", help="also time DeepLiftShap over K rows")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"median of {args.repeats} runs of each method, taken in turn")
    print("ours: a shared baseline reused over batches (its reference pass cached); cold: re-run every call")
    print(f"{'model':<14}{'plain f+b':>12}{'ours':>12}{'ours cold':>12}{'captum':>12}{'ours/plain':>12}"
          f"{'cold/plain':>12}{'captum/plain':>14}"
          f"{'captum/ours':>13}{'ours rel.delta':>16}{'captum rel.delta':>18}")
    for name in args.models.split(","):
        r = bench(name, device, args.batch, args.size, args.repeats)
        print(f"{r['model']:<14}{r['plain_s'] * 1e3:>10.2f}ms{r['ours_s'] * 1e3:>10.2f}ms{r['cold_s'] * 1e3:>10.2f}ms"
              f"{r['captum_s'] * 1e3:>10.2f}ms{r['ours_s'] / r['plain_s']:>12.2f}{r['cold_s'] / r['plain_s']:>12.2f}"
              f"{r['captum_s'] / r['plain_s']:>14.2f}"
              f"{r['captum_s'] / r['ours_s']:>13.2f}{r['ours_delta']:>16.1e}{r['captum_delta']:>18.1e}"
              + (f"  ({r['captum_error']})" if "captum_error" in r else ""))
    if args.shap:
        print(f"\nDeepLiftShap over {args.shap} background rows (their references cached over batches)")
        print(f"{'model':<14}{'plain f+b':>12}{'ours':>12}{'captum':>12}{'ours/(K*plain)':>16}{'captum/ours':>13}")
        for name in args.models.split(","):
            r = bench_shap(name, device, args.batch, args.size, args.repeats, args.shap)
            print(f"{r['model']:<14}{r['plain_s'] * 1e3:>10.2f}ms{r['ours_s'] * 1e3:>10.2f}ms"
                  f"{r['captum_s'] * 1e3:>10.2f}ms{r['ours_s'] / (args.shap * r['plain_s']):>16.2f}"
                  f"{r['captum_s'] / r['ours_s']:>13.2f}" + (f"  ({r['captum_error']})" if "captum_error" in r else ""))


if __name__ == "__main__":
    main()
