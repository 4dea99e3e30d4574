"""The ONNX node-suite figure: how many of the installed onnx package's one-node tensor cases
onnx_attr imports and computes right, beside onnx2torch as it is and onnxruntime, measured in one run.

    python benchmarks/node_suite.py [--by-op 30] [--write-baseline]

--write-baseline records the passing cases in tests/data/node_suite_passing.txt, the list the
regression test holds us to.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import conformance  # noqa: E402

BASELINE = ROOT / "tests" / "data" / "node_suite_passing.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--by-op", type=int, default=25, help="rows of the per-op table (ops with failures)")
    parser.add_argument("--write-baseline", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import onnx

    start = time.time()
    cases = list(conformance.tensor_cases())
    ours = {c.name: conformance.run_ours(c) for c in cases}
    theirs = {c.name: conformance.run_onnx2torch(c) for c in cases}
    runtime = {c.name: conformance.run_onnxruntime(c) for c in cases}
    op_of = {c.name: c.model.graph.node[0].op_type if len(c.model.graph.node) == 1 else "(several nodes)"
             for c in cases}
    counts = collections.Counter(o for o, _ in ours.values())
    n = len(cases)
    print(f"onnx {onnx.__version__}: {n} one-node tensor cases ({time.time() - start:.0f} s)")
    print(f"onnx_attr:  pass {counts['pass']} ({100 * counts['pass'] / n:.1f}%), clear error {counts['clear']}, "
          f"wrong {counts['wrong']}, crash {counts['crash']}")
    passed = sum(v == "pass" for v in theirs.values())
    print(f"onnx2torch: pass {passed} ({100 * passed / n:.1f}%)")
    ort_passed = sum(v == "pass" for v in runtime.values())
    print(f"onnxruntime (CPU provider, the same comparison): pass {ort_passed} ({100 * ort_passed / n:.1f}%)")
    table = conformance.summarize(ours, op_of.get)
    failing = sorted(((k, v) for k, v in table.items() if v["pass"] < sum(v.values())),
                     key=lambda kv: -(sum(kv[1].values()) - kv[1]["pass"]))
    print(f"\n{'op':<28}{'pass':>6}{'clear':>7}{'wrong':>7}{'crash':>7}")
    for op, v in failing[:args.by_op]:
        print(f"{op:<28}{v['pass']:>6}{v['clear']:>7}{v['wrong']:>7}{v['crash']:>7}")
    by_name = {c.name: c for c in cases}
    for name, (outcome, detail) in sorted(ours.items()):
        if outcome == "wrong" and conformance.agrees_with_onnxruntime(by_name[name]):
            detail += "; matches onnxruntime"
        if outcome in ("wrong", "crash"):
            print(f"{outcome}: {name}: {detail}")
    if args.write_baseline:
        BASELINE.parent.mkdir(exist_ok=True)
        BASELINE.write_text("".join(f"{name}\n" for name, (o, _) in sorted(ours.items()) if o == "pass"))
        print(f"wrote {BASELINE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
