"""Fuzz worker: mutated ONNX files and input arrays through load, run, verify and DeepLift.

    python tests/fuzz_worker.py CASES

Prints one JSON line: how many cases ran, the outcomes, and every raw (undocumented) exception.
Runs in its own process (tests/test_fuzz.py) so that a hard crash or a hang is seen, not suffered.
"""

from __future__ import annotations

import collections
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnx_attr

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
MODELS = [(SAMPLES / f"{n}.onnx").read_bytes() for n in ("digits_cnn", "breast_cancer_mlp")]
INPUTS = [dict(np.load(SAMPLES / f"{n}_inputs.npz")) for n in ("digits_cnn", "breast_cancer_mlp")]
outcomes: collections.Counter = collections.Counter()
raw: list[str] = []


@st.composite
def mutated_model(draw):
    which = draw(st.integers(0, len(MODELS) - 1))
    data = bytearray(MODELS[which])
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):  # intact models too, to reach deep paths
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "duplicate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return which, bytes(data)


@st.composite
def mutated_inputs(draw, which):
    base = dict(INPUTS[which])
    name, value = next(iter(base.items()))
    kind = draw(st.sampled_from(["same"] * 4 + ["nan", "shape", "dtype", "rename", "empty", "extra", "huge"]))
    if kind == "nan":
        value = value.copy()
        value.flat[draw(st.integers(0, value.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    elif kind == "shape":
        value = value.reshape(-1)[: draw(st.integers(0, value.size))]
    elif kind == "dtype":
        value = value.astype(draw(st.sampled_from([np.int64, np.float64, np.bool_, np.float16, np.uint8])))
    elif kind == "rename":
        return {name + "_x": value}
    elif kind == "empty":
        value = value[:0]
    elif kind == "extra":
        return {name: value, "unexpected": value}
    elif kind == "huge":
        value = value * draw(st.sampled_from([1e30, -1e30, 1e-30]))
    return {name: value}


def exercise(model_bytes: bytes, which: int, inputs: dict) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = onnx_attr.load(model_bytes)
            model.run(inputs)
            model.verify(inputs)
            target = 0 if model.outputs[0].shape and model.outputs[0].shape[-1] != 1 else None
            onnx_attr.DeepLift(model).attribute(inputs, target=target)
        return "result"
    except onnx_attr.OnnxAttrError as err:
        return type(err).__name__
    except Exception as err:  # noqa: BLE001 - an undocumented exception is what this looks for
        raw.append(f"{type(err).__name__}: {str(err)[:300]}")
        return "raw"


def main(cases: int) -> None:
    @settings(max_examples=cases, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def case(data):
        which, model_bytes = data.draw(mutated_model())
        outcomes[exercise(model_bytes, which, data.draw(mutated_inputs(which)))] += 1

    case()
    print(json.dumps({"cases": sum(outcomes.values()), "outcomes": dict(outcomes), "raw": raw[:50]}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
