"""Large graphs, step by step: where the time goes on the shipped detectors and OCR nets.

    python benchmarks/large_graph.py [--only NAME[,NAME]] [--profile DIR]

For each model of `benchmarks/real_exports.py` (default: layout_cdla, dddd_det, ppocr_det,
ppocr_rec, dddd_ocr_quant), in a fresh process each: the imports (torch, onnx, onnx2torch, our
converters and DeepLift method, and the sympy that torch's autograd imports on its first grad with
grad_outputs), `onnx_attr.load`, `verify`, the first DeepLift call (rewrite + batch probe +
reference pass + attribution; the probe's share is printed: it runs the plain model on one row and on
three, once per model and input shape, for whichever method comes first, where the graph and the
declared shapes leave it anything to find), the second call (the first of the next five, which fills
the shared reference's memo of f(x0)) and the steady state (the median of those five calls),
and a plain forward plus input gradient (the median of five, each run right after one of those
calls, so that both feel the same load) as the yardstick; beside it, the input gradient the gradient
methods take (Saliency's), which differs on a dynamically quantized model: there autograd's plain
gradient reaches the input only through the quantizers' scales (no convolution's backward runs),
and the methods pass the rounding straight through (methods/straight_through.py). The steady call reuses the reference pass of the shared baseline; the same call
with its reference pass run again (a new baseline each call) is printed too: the first call over it is
what a first call pays once. The targets of issue 18 §7: load + verify ≤ 30 s, first call ≤
2× the steady state, the steady state ≤ 1.5× the forward + gradient. In a second fresh process,
the yardstick's own first call over its steady state, after the same load and verify: what any
first call pays for memory and kernel set-up (oneDNN builds its convolution primitives per shape
and per grad mode on first use). Beside both first calls, the page faults they take and their
seconds in the kernel: memory a process touches for the first time faults once per 4 KiB page,
and the kernel zero-fills each page before handing it over. Then the cost of the wide (float64) multipliers: the seconds
inside the widening rules' backward in a steady call, as they are and computed in float32 (with
that call's relative delta). The machine's load average is printed with the table: timings on a
shared machine are pessimistic. `--profile DIR` writes a cProfile of each first DeepLift call there.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT = ("layout_cdla", "dddd_det", "ppocr_det", "ppocr_rec", "dddd_ocr_quant")
HERE = Path(__file__).resolve().parent


def measure(name: str, profile_dir: str | None, target) -> dict:
    """Runs in a worker process: every figure for one model, in seconds."""
    sys.path.insert(0, str(HERE))
    import real_exports

    times: dict = {}
    start = time.perf_counter()
    import numpy as np  # noqa: F401
    import torch

    import onnx_attr
    import onnx_attr.importing.convert  # noqa: F401  (torch, onnx, onnx2torch)
    # torch's autograd imports sympy (torch.fx.experimental.symbolic_shapes) on the first grad given
    # grad_outputs, ~0.5 s once per process: an import like torch's own, counted here, not in a call
    import torch.fx.experimental.symbolic_shapes  # noqa: F401
    import onnx_attr.methods.deeplift  # noqa: F401  (loaded on first use of onnx_attr.DeepLift)
    times["import"] = time.perf_counter() - start
    spec = next(s for s in real_exports.SPECS if s.name == name)
    path = real_exports.fetch(spec, real_exports.CACHE)
    inputs = spec.inputs()
    start = time.perf_counter()
    model = onnx_attr.load(str(path))
    times["load"] = time.perf_counter() - start
    start = time.perf_counter()
    times["verified"] = model.verify(inputs).passed
    times["verify"] = time.perf_counter() - start
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    import onnx_attr.importing.batch as batch

    probing, spent = batch._probe, [0.0]

    def timed_probe(*args, **kwargs):  # the batch probe's share of the first call (once per model and shape)
        begin = time.perf_counter()
        try:
            return probing(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - begin

    batch._probe = timed_probe
    before = memory_faults()
    start = time.perf_counter()
    method = onnx_attr.DeepLift(model)  # the rewrite is part of the first call
    method.attribute(inputs, target=target, return_convergence_delta=True)
    times["deeplift_first"] = time.perf_counter() - start
    times["first_faults"], times["first_kernel"] = (a - b for a, b in zip(memory_faults(), before))
    batch._probe = probing
    times["probe"] = spent[0]
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(Path(profile_dir) / f"{name}_deeplift_first.prof"))
    steady, plain = [], []
    forward_grad(model, inputs)  # the yardstick's own first call, not counted (see `plain_first`)
    # the input gradient our gradient methods take (Saliency's): through a dynamically quantized
    # block's rounding straight through (methods/straight_through.py), else the plain one
    from onnx_attr.methods.straight_through import straight_through_view

    view = straight_through_view(model)
    forward_grad(view, inputs)
    through = []
    for _ in range(5):  # interleaved, so that both feel the same load; the first DeepLift one still pays
        start = time.perf_counter()  # for memory first touched in the first call: the medians
        method.attribute(inputs, target=target, return_convergence_delta=True)
        steady.append(time.perf_counter() - start)
        plain.append(forward_grad(model, inputs))
        through.append(forward_grad(view, inputs) if view is not model else plain[-1])
    times["deeplift_second"] = sorted(steady)[2]
    times["deeplift_call2"] = steady[0]  # the second call: where a memo of the shared reference is filled
    times["delta"] = float(method.last_report["max_relative_delta"])
    times["forward_grad"] = sorted(plain)[2]
    times["methods_grad"] = sorted(through)[2]
    # the same call with its reference pass run again (a new baseline every call): what the first call
    # pays beyond that pass is the one-time cost (rewrite, probe, fx code generation, cold memory)
    method.engine.cache_reference = False
    fresh = []
    for _ in range(3):
        start = time.perf_counter()
        method.attribute(inputs, target=target, return_convergence_delta=True)
        fresh.append(time.perf_counter() - start)
    method.engine.cache_reference = True
    times["deeplift_fresh_reference"] = sorted(fresh)[1]
    times["nodes"] = len(model.onnx_model.graph.node)
    times.update(wide_cost(method, inputs, target))
    return times


def forward_grad(model, inputs) -> float:
    """Seconds for one plain forward and the gradient of one value of the explained output (the
    methods' default: the first floating one) w.r.t. the float inputs: any value's costs the same."""
    import torch
    from onnx_attr.methods.base import output_index

    live = [torch.from_numpy(v).requires_grad_(v.dtype.kind == "f") for v in inputs.values()]
    start = time.perf_counter()
    out = model(*live)
    out = out[output_index(model, None)] if isinstance(out, (tuple, list)) else out
    torch.autograd.grad(out[(0,) * out.dim()], [t for t in live if t.requires_grad])
    return time.perf_counter() - start


def plain_first(name: str) -> dict:
    """Runs in a worker process: the yardstick's own first call against its steady state, after the
    same load and verify: what a fresh process pays once for anything (allocations, kernel set-up)."""
    sys.path.insert(0, str(HERE))
    import real_exports

    import onnx_attr

    spec = next(s for s in real_exports.SPECS if s.name == name)
    model = onnx_attr.load(str(real_exports.fetch(spec, real_exports.CACHE)))
    inputs = spec.inputs()
    model.verify(inputs)
    before = memory_faults()
    times = [forward_grad(model, inputs)]
    faults, kernel = (a - b for a, b in zip(memory_faults(), before))
    times += [forward_grad(model, inputs) for _ in range(3)]
    target = spec.target
    if target is None:  # the CLI's default for the output's layout, found here so that the measured
        # process's first call runs the batch probe cold
        from onnx_attr.app.target_forms import resolve
        from onnx_attr.methods.base import output_index

        index = output_index(model, None)
        target = resolve(None, model.run(inputs)[index], model=model, output_index=index, inputs=inputs,
                         examples=1).target
    # handed to the measuring worker as a pickle (a Target object may hold a mask), between two
    # processes of this run, in a file of this run's own
    with tempfile.NamedTemporaryFile(suffix=".pickle", delete=False) as handle:
        pickle.dump(target, handle)
    return {"plain_first": times[0], "plain_steady": sorted(times[1:])[1], "target": handle.name,
            "plain_faults": faults, "plain_kernel": kernel}


def first_touch_cost(megabytes: int = 256) -> float:
    """Microseconds of kernel time per fresh 4 KiB page, measured in this process: the price of every
    page a first call touches. On this project's virtual machines, memory the guest has not used since
    it started costs 4-9 µs a page (the host backs it on first touch: 14 GB took 30 s of kernel time
    once, 3 s the second time), memory used and freed before 0.4-0.9 µs: the first-call ratios
    below move with it, whatever the code does, so quote them with this figure."""
    import numpy as np

    kernel = memory_faults()[1]
    block = np.empty(megabytes << 20, np.uint8)
    block[::4096] = 1  # one write per page: each faults once (or once per 2 MiB where numpy asks for huge pages)
    spent = memory_faults()[1]
    del block
    return (spent - kernel) / (megabytes * 256) * 1e6


def memory_faults() -> tuple[int, float]:
    """(page faults, seconds in the kernel) of this process so far. A first call's extra time is mostly
    the kernel handing it fresh memory: each 4 KiB page it first touches faults and is zero-filled."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt, usage.ru_stime


def wide_cost(method, inputs, target) -> dict:
    """What the wide multipliers (float64, issue 16) cost in a steady-state call: the seconds spent in
    the backward of the rules that widen, once as they are and once with widening off (same nodes,
    float32 arithmetic), plus how many nodes have such a rule and the call's delta without it."""
    from onnx_attr.deeplift.rules import RULES
    from onnx_attr.deeplift.rules.base import DecomposedRule

    widening = {type(r) for r in RULES.values() if getattr(r, "wide", False)}
    nodes = sum(type(RULES.get(op)) in widening for _, op, _ in method.engine.rewrite.rewritten)
    spent = [0.0]
    backward = DecomposedRule.backward

    def timed(self, *args, **kwargs):
        if type(self) not in widening:
            return backward(self, *args, **kwargs)
        start = time.perf_counter()
        try:
            return backward(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    figures = {"wide_nodes": nodes, "wide_s": 0.0, "narrow_s": 0.0, "narrow_delta": float("nan")}
    if not nodes:
        return figures
    DecomposedRule.backward = timed
    try:
        for label in ("wide", "narrow"):
            for cls in widening:
                cls.wide = label == "wide"
            spent[0] = 0.0
            method.attribute(inputs, target=target, return_convergence_delta=True)
            figures[f"{label}_s"] = spent[0]
            figures[f"{label}_delta"] = float(method.last_report["max_relative_delta"])
    finally:
        DecomposedRule.backward = backward
        for cls in widening:
            cls.wide = True
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated model names (default: " + ", ".join(DEFAULT) + ")")
    parser.add_argument("--profile", help="write a cProfile of each first DeepLift call into this folder")
    parser.add_argument("--allocator", choices=("cli", "default"), default="cli",
                        help="cli (default): glibc keeps freed memory for reuse, as the command line sets it "
                             "(onnx_attr.keep_freed_memory); default: glibc's malloc as it comes")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--plain-worker", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if (args.worker or args.plain_worker) and args.allocator == "cli":
        from onnx_attr.app.allocator import keep_freed_memory

        keep_freed_memory()
    if args.worker:
        with open(args.target, "rb") as handle:
            target = pickle.load(handle)
        os.unlink(args.target)
        print(json.dumps(measure(args.worker, args.profile, target)))
        return
    if args.plain_worker:
        print(json.dumps(plain_first(args.plain_worker)))
        return
    names = args.only.split(",") if args.only else list(DEFAULT)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; allocator: {args.allocator}; "
          f"first touch of a page: {first_touch_cost():.1f} µs (`first_touch_cost`)")
    print("| model | nodes | import | load | verify | load+verify | DeepLift 1st | of it: batch probe | 2nd | steady | steady, fresh reference | fwd+grad | "
          "1st/steady | 1st/fresh | (1st − probe)/steady | steady/fwd+grad | steady/methods' fwd+grad | plain fwd+grad 1st/steady | 1st: page faults, kernel s | plain 1st: page faults, kernel s | rel. δ | wide nodes | "
          "their backward: float64 / float32 (δ) |")
    print("|---" * 23 + "|")
    for name in names:
        plain = subprocess.run([sys.executable, __file__, "--plain-worker", name, "--allocator", args.allocator],
                               capture_output=True, text=True)
        p = json.loads(plain.stdout.strip().splitlines()[-1]) if plain.returncode == 0 else {}
        command = [sys.executable, __file__, "--worker", name, "--allocator", args.allocator] \
            + (["--profile", args.profile] if args.profile else []) + ["--target", p.get("target", "")]
        done = subprocess.run(command, capture_output=True, text=True) if p else plain
        if done.returncode or plain.returncode:
            print(f"| {name} | failed: {((done.stderr or plain.stderr).strip().splitlines() or ['?'])[-1][:200]} |")
            continue
        t = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {name} | {t['nodes']} | {t['import']:.1f} | {t['load']:.1f} | {t['verify']:.1f}"
              f"{'' if t['verified'] else ' (FAIL)'} | {t['load'] + t['verify']:.1f} | {t['deeplift_first']:.2f} | "
              f"{t['probe']:.2f} | {t['deeplift_call2']:.2f} | {t['deeplift_second']:.2f} | {t['deeplift_fresh_reference']:.2f} | "
              f"{t['forward_grad']:.2f} | {t['deeplift_first'] / t['deeplift_second']:.2f} | "
              f"{t['deeplift_first'] / t['deeplift_fresh_reference']:.2f} | "
              f"{(t['deeplift_first'] - t['probe']) / t['deeplift_second']:.2f} | "
              f"{t['deeplift_second'] / t['forward_grad']:.2f} | {t['deeplift_second'] / t['methods_grad']:.2f} | "
              f"{p['plain_first'] / p['plain_steady']:.2f} | {t['first_faults'] / 1000:.0f}k, {t['first_kernel']:.2f} | "
              f"{p['plain_faults'] / 1000:.0f}k, {p['plain_kernel']:.2f} | "
              f"{t['delta']:.0e} | {t['wide_nodes']} | "
              f"{t['wide_s']:.2f} / {t['narrow_s']:.2f} s ({t['narrow_delta']:.0e}) |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
