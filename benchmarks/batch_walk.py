"""The batch walk against the batch probe, on the shipped models of `real_exports.py`.

    python benchmarks/batch_walk.py [--only NAME[,NAME]]

For each model: the output axes the graph walk (`onnx_attr.importing.batch_graph`) proves on the
model's realistic input, or that it declines, with its seconds; and where it answers, the probe's
own runs ([x] and [x, x/2, x] through the plain model) and whether the two agree. An answer that
disagrees is a bug in the walk. The models must be in the cache `real_exports.py` fills.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_exports  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated model names (default: all)")
    args = parser.parse_args()
    import onnx_attr
    from onnx_attr.importing import batch
    from onnx_attr.importing.batch_graph import traced_output_axes

    names = args.only.split(",") if args.only else [s.name for s in real_exports.SPECS]
    answered = agreed = 0
    print("| model | walk | seconds | probe | seconds | agree |")
    print("|---|---|---|---|---|---|")
    for name in names:
        spec = next(s for s in real_exports.SPECS if s.name == name)
        model = onnx_attr.load(str(real_exports.fetch(spec, real_exports.CACHE)))
        tensors = model.prepare(spec.inputs())
        axes = batch.batch_axes(model.inputs, tensors)
        start = time.perf_counter()
        per_pass = batch._rows_round_together(model)  # a dynamic quantization: each example in a pass of its own
        walked = traced_output_axes(model, tensors, axes, per_pass=per_pass)
        walk_s = time.perf_counter() - start
        if walked is None:
            print(f"| {name} | declines | {walk_s:.2f} | | | |", flush=True)
            continue
        answered += 1
        batch_walk, batch.traced_output_axes = batch.traced_output_axes, lambda *a, **k: None
        try:
            start = time.perf_counter()
            probed = batch._probe(model, tensors, axes)
            probe_s = time.perf_counter() - start
        finally:
            batch.traced_output_axes = batch_walk
        same = probed.stackable and probed.doubles != per_pass and tuple(probed.outputs) == tuple(walked)
        agreed += same
        print(f"| {name} | {walked} | {walk_s:.2f} | {tuple(probed.outputs)}{'' if probed.doubles or per_pass else ' (mixed)'} | "
              f"{probe_s:.2f} | {'yes' if same else 'NO'} |", flush=True)
    print(f"\nthe walk answered for {answered} of {len(names)}; agreed with the probe on {agreed}")


if __name__ == "__main__":
    main()
