"""`import onnx_attr` asks OpenMP's idle workers to sleep (OMP_WAIT_POLICY=PASSIVE) unless the user
chose a policy or torch (which reads it once) was imported first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _policy_after(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    done = subprocess.run([sys.executable, "-c", code + "; import os; print(os.environ.get('OMP_WAIT_POLICY'))"],
                          capture_output=True, text=True, env={**base, "PYTHONPATH": str(ROOT), **env}, check=True)
    return done.stdout.strip().splitlines()[-1]


def test_import_sets_passive_wait_policy():
    assert _policy_after("import onnx_attr") == "PASSIVE"


def test_a_policy_the_user_set_is_kept():
    assert _policy_after("import onnx_attr", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


@pytest.mark.slow  # imports torch in a fresh interpreter
def test_nothing_set_when_torch_came_first():
    # OpenMP has read the environment already: setting it now would claim an effect it cannot have
    assert _policy_after("import torch, onnx_attr") == "None"
