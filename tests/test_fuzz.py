"""Fuzzing: mutated ONNX files and inputs end in a result or a documented error, never a raw
exception, an interpreter crash or a hang (the worker runs in its own process, under a timeout)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CASES = 2000


def test_mutated_models_and_inputs_only_end_in_results_or_documented_errors():
    worker = Path(__file__).with_name("fuzz_worker.py")
    done = subprocess.run([sys.executable, str(worker), str(CASES)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"the worker crashed (exit {done.returncode}): {done.stderr[-2000:]}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["cases"] == CASES
    assert summary["raw"] == [], summary["raw"]
    assert summary["outcomes"].get("result", 0) > CASES // 40  # intact models do get all the way through
    assert summary["outcomes"].get("ModelLoadError", 0) > CASES // 4
