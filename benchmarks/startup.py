"""How long the command line takes to answer when it has nothing heavy to do.

`onnx-attr --help`, `--version` and a usage error must answer in well under a second: the CLI
imports torch, onnx and onnx2torch only inside the commands. Each case runs in a fresh
interpreter (the console script), best of `--repeat` runs, and the script exits 1 when a case is
over `--limit` seconds. It also lists any heavy module that `import onnx_attr` pulls in.

    python benchmarks/startup.py [--repeat 5] [--limit 1.0]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "onnx", "onnx2torch", "onnxruntime", "numpy", "captum", "matplotlib", "PIL")

CASES = {
    "--help": ["--help"],
    "--version": ["--version"],
    "attribute --help": ["attribute", "--help"],
    "usage error (no subcommand)": [],
    "usage error (--atol -1)": ["verify", "m.onnx", "--atol", "-1"],
}


def time_case(argv: list[str], repeat: int, env: dict) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "onnx_attr.app.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def heavy_imports(env: dict) -> list[str]:
    code = f"import sys, onnx_attr, onnx_attr.app.cli; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--limit", type=float, default=1.0, help="seconds a case may take (default 1.0)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    python_alone = min(_time([sys.executable, "-c", "pass"], env) for _ in range(args.repeat))
    print(f"python -c pass: {python_alone:.3f} s (the floor)")
    slow = []
    for name, argv in CASES.items():
        seconds = time_case(argv, args.repeat, env)
        flag = "" if seconds <= args.limit else f"  OVER {args.limit:g} s"
        print(f"onnx-attr {name:32s} {seconds:.3f} s{flag}")
        if flag:
            slow.append(name)
    heavy = heavy_imports(env)
    print("heavy modules imported by `import onnx_attr, onnx_attr.app.cli`: " + (", ".join(heavy) or "none"))
    return 1 if slow or heavy else 0


def _time(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
