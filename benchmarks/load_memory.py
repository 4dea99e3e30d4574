"""Peak memory of `onnx_attr.load` against the size of the weights, for weights inside the .onnx file.

    python benchmarks/load_memory.py [--mib 128 512] [--folder /tmp/load_memory]

Each figure is the peak RSS of a fresh process that imports everything and loads the model, minus
the peak of a fresh process that imports everything and loads a tiny model (the baseline); both
read through `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` of a process that waits on them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

def write_model(path: Path, mib: int, side: int = 1024, external: bool = False) -> int:
    """A MatMul/Relu chain holding `mib` MiB of float32 weights (4 MiB matrices at side 1024), inside
    the .onnx file or beside it; returns the weights' bytes."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = max(1, mib * 2**20 // (side * side * 4))
    inits, nodes, last = [], [], "x"
    for k in range(n):
        w = np.random.default_rng(k).standard_normal((side, side)).astype(np.float32) / side ** 0.5
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        nodes += [helper.make_node("MatMul", [last, f"w{k}"], [f"h{k}"]), helper.make_node("Relu", [f"h{k}"], [f"r{k}"])]
        last = f"r{k}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", side])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", side])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path),
              save_as_external_data=external, location=Path(path).name + ".bin")
    return n * side * side * 4


_LOAD = """
import sys, onnx_attr, onnx_attr.importing.loader, torch, onnx, numpy
onnx_attr.load(sys.argv[1])
"""


def _peak_mib(code: str, *args: str) -> float:
    """Peak RSS (MiB) of a fresh child running `code`, the only child waited on so far by a fresh waiter."""
    waiter = textwrap.dedent(f"""
        import resource, subprocess, sys
        subprocess.run([sys.executable, "-c", {code!r}, *sys.argv[1:]], check=True)
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    """)
    done = subprocess.run([sys.executable, "-c", waiter, *args], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def measure(mib: int, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    path, tiny = folder / f"inline_{mib}.onnx", folder / "inline_tiny.onnx"
    weights = write_model(path, mib)
    write_model(tiny, 0, side=8)  # one 8x8 matrix
    base = _peak_mib(_LOAD, str(tiny))
    peak = _peak_mib(_LOAD, str(path))
    grown = peak - base
    return {"weights_mib": round(weights / 2**20, 1), "baseline_peak_mib": round(base, 1),
            "load_peak_mib": round(peak, 1), "load_over_baseline_mib": round(grown, 1),
            "ratio": round(grown / (weights / 2**20), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/load_memory"))
    args = parser.parse_args()
    for mib in args.mib:
        print(json.dumps(measure(mib, args.folder)), flush=True)


if __name__ == "__main__":
    main()
