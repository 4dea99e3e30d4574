"""Fuzzing: field-aware mutations of ONNX models and inputs (tests/fuzz_worker.py) end in a result
or a documented error, never a raw exception, a signal, a hang or memory beyond the budget.

Each case runs in a forked child under an address-space limit and a timeout. CI runs a small
count; the long campaign is `python tests/fuzz_worker.py --cases 20000 --log cases.jsonl
--summary out.json` (resumable; ranges with --first add up)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("fuzz_worker.py")


def _campaign(cases: int, seed: int) -> dict:
    done = subprocess.run([sys.executable, str(WORKER), "--cases", str(cases), "--seed", str(seed), "--timeout", "60"],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"the fork server died (exit {done.returncode}): {done.stderr[-2000:]}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["cases"] == cases
    return summary


def _assert_clean(summary: dict) -> None:
    for kind in ("raw", "crash", "hang", "memory"):
        assert summary[kind] == [], (kind, summary[kind][:5])
    assert summary["outcomes"].get("result", 0) > 0  # intact models do get all the way through
    assert summary["outcomes"].get("clear", 0) > summary["cases"] // 4  # mutations do reach the guards


def test_field_aware_mutations_only_end_in_results_or_documented_errors():
    _assert_clean(_campaign(60, seed=0))  # ~15 s (mostly the server's imports); the slow test and the campaign run more


@pytest.mark.slow
def test_longer_field_aware_campaign():
    _assert_clean(_campaign(2000, seed=1))


def test_the_worker_classifies_a_signal_a_hang_and_a_raw_exception(monkeypatch):
    """The classifier itself can fail: a child killed by SIGFPE, one that sleeps past the timeout
    and one that raises a plain exception are each reported as what they are."""
    import os
    import signal
    import time

    sys.path.insert(0, str(WORKER.parent))
    import fuzz_worker

    def crash(_data, _seed):
        os.kill(os.getpid(), signal.SIGFPE)

    def hang(_data, _seed):
        time.sleep(30)

    def raw(_data, _seed):
        raise KeyError("x")

    def hog(_data, _seed):
        return len(bytearray(2**32))

    for fn, kind in ((crash, "crash"), (hang, "hang"), (raw, "raw"), (hog, "memory")):
        monkeypatch.setattr(fuzz_worker, "exercise", fn)
        assert fuzz_worker.run_case(b"", 0, timeout=3, memory=2**30)["kind"] == kind, kind


def test_campaign_ranges_resume_and_add_up(tmp_path, monkeypatch):
    """A campaign split into overlapping ranges over one log runs each case once, and the summary
    covers the union; a log written with another seed is refused, not mixed in."""
    sys.path.insert(0, str(WORKER.parent))
    import fuzz_worker

    ran: list[int] = []
    monkeypatch.setattr(fuzz_worker, "warm", lambda seeds: None)
    monkeypatch.setattr(fuzz_worker, "exercise", lambda data, case_seed: (ran.append(case_seed), ("result", ""))[1])
    log = str(tmp_path / "cases.jsonl")
    fuzz_worker.campaign(0, 6, 5, 10.0, 2**30, False, log)
    fuzz_worker.campaign(3, 6, 5, 10.0, 2**30, False, log)
    lines = [json.loads(line) for line in Path(log).read_text().splitlines()]
    records = [line for line in lines if not line.get("header")]
    assert sorted(r["case"] for r in records) == list(range(9))
    assert len(ran) == 0  # exercise ran in forked children, never in this process
    summary = fuzz_worker.summarize(records, lines[0])
    assert summary["cases"] == 9 and summary["outcomes"] == {"result": 9} and summary["seed"] == 5
    assert [r["case_seed"] for r in records[:3]] == [fuzz_worker.case_plan(5, i, lines[0]["seed_models"])[0]
                                                    for i in range(3)]
    with pytest.raises(SystemExit, match="seed 5"):
        fuzz_worker.campaign(0, 2, 6, 10.0, 2**30, False, log)
