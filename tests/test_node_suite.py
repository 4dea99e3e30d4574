"""The regression guard over ONNX's node suite: no case that passed may stop passing, and no case
may end in a raw exception (every refusal is one of our errors, naming the op)."""

from __future__ import annotations

from pathlib import Path

import pytest

import conformance

BASELINE = Path(__file__).parent / "data" / "node_suite_passing.txt"


@pytest.fixture(scope="module")
def outcomes():
    return {case.name: conformance.run_ours(case) for case in conformance.tensor_cases()}


def test_no_case_ends_in_a_raw_exception(outcomes):
    crashes = {n: d for n, (o, d) in outcomes.items() if o == "crash"}
    assert not crashes, crashes


def test_no_passing_case_regresses(outcomes):
    expected = [n for n in BASELINE.read_text().split() if n]
    regressed = {n: outcomes[n] for n in expected if n in outcomes and outcomes[n][0] != "pass"}
    assert not regressed, (
        f"{len(regressed)} case(s) that passed no longer do: {regressed}"
    )


def test_the_suite_is_not_vacuous(outcomes):
    assert len(outcomes) > 1000 and sum(o == "pass" for o, _ in outcomes.values()) >= 600
