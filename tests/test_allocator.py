"""keep_freed_memory: glibc keeps a freed feature map for the next one, so its pages do not fault
again; it leaves the allocator alone where the user chose one. Each case runs in a fresh process
(the setting is the process's)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")

#: allocates, touches and frees a 128 MB feature map, then counts the page faults a 64 MB one takes
PROBE = """
import resource, sys, torch
from onnx_attr import keep_freed_memory
kept = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = torch.empty(32 * 2**20).fill_(1.0); del t
before = faults()
t = torch.empty(16 * 2**20).fill_(1.0)
print(int(kept), faults() - before)
"""


def _run(env_extra: dict) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "ONNX_ATTR_ALLOC"))}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kept, faults = out.stdout.split()
    return int(kept), int(faults)


def test_a_freed_feature_map_is_reused_without_faulting_again():
    kept, faults = _run({})
    assert kept == 1
    assert faults < 1000  # 64 MB is 16,384 pages of 4 KB: each faulted when the block was fresh memory
    _, default = _run({"ONNX_ATTR_ALLOCATOR": "default"})
    assert default > 10_000  # the default behaviour: mmap, returned on free, faulted again


def test_the_users_own_allocator_settings_are_left_alone():
    assert _run({"MALLOC_MMAP_THRESHOLD_": "131072"})[0] == 0
    assert _run({"ONNX_ATTR_ALLOCATOR": "default"})[0] == 0


def test_the_command_line_keeps_freed_memory(tmp_path):
    """The CLI sets it in its own process (main, before any command runs)."""
    sample = os.path.join(os.path.dirname(__file__), "..", "samples", "digits_cnn.onnx")
    code = ("import onnx_attr.app.allocator as a, onnx_attr.app.cli as c; "
            f"rc = c.main(['-q', 'inspect', {sample!r}]); print('SET', a._done, rc)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "ONNX_ATTR_ALLOC"))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "SET True 0" in out.stdout, out.stdout + out.stderr
