"""Four batch layouts every registered method must handle, each as a small ONNX graph with a
batch-first twin: the same function with every batch on axis 0 (a Transpose inside where the
original has it elsewhere, a held input baked in as a constant, a whole example given a batch of
one). A method on the original must give what it gives on the twin, moved back: the twin has the
layout every method is checked against Captum on, so this is Captum's answer on a module that
permutes the batch to axis 0.

- `state_axis1`: x [N, 4] and a state [2, N, 8] (silero's layout), both attributed;
- `held`: x [N, 4] and h [3, 1, 8] without a batch (N = 3: its axis 0 looks like one), held;
- `time_major`: x [N, 6, 5] read as time-major, output [T, N, C] (a CRNN's);
- `frames`: x [frames, 6] through an LSTM over its axis 0: "frames" looks like a batch, but the
  probe finds the rows mix, so the tensors are one whole example.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
from onnx import helper

from conftest import FLOAT, make_model

R = np.random.default_rng(1818)


def _w(*shape, scale=0.5):
    return (scale * R.standard_normal(shape)).astype(np.float32)


def _t(*perm):
    return lambda a: np.transpose(np.asarray(a), perm)


def _same(a):
    return np.asarray(a)


@dataclass
class Case:
    name: str
    model: Any  # the ONNX model
    twin: Any  # its batch-first twin
    inputs: dict  # the attributed inputs, in the original's layout
    held: Optional[dict]  # additional_forward_args of the original (the twin has them baked in)
    to_twin: dict  # input name -> the array in the twin's layout (inputs, masks, baseline rows)
    back: dict  # input name -> a twin attribution in the original's layout
    layer: str
    layer_back: Callable
    target: Any
    twin_target: Any
    neuron: Any
    twin_neuron: Any
    windows: tuple  # Occlusion's sliding windows (non-batch shape), the same in both
    masks: dict  # feature ids per input, in the original's layout (batch 1 on the batch axis)
    rows: dict  # baseline distributions (3 rows on the batch axis), in the original's layout
    twin_rows: Optional[dict] = None  # the twin's, where not `to_twin` of `rows`

    def twin_inputs(self, values: dict) -> dict:
        return {k: self.to_twin[k](v) for k, v in values.items()}


def state_nodes(state: str = "s") -> tuple[list, dict]:
    """relu(x·w + s[0]·s[1])·v, the state's rows on axis 0 of `state`: the nodes and their constants."""
    body = [helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Gather", [state, "i0"], ["s0"], axis=0),
            helper.make_node("Gather", [state, "i1"], ["s1"], axis=0),
            helper.make_node("Mul", ["s0", "s1"], ["p"]),
            helper.make_node("Add", ["h", "p"], ["z"]),
            helper.make_node("Relu", ["z"], ["a"]),
            helper.make_node("MatMul", ["a", "v"], ["out"])]
    return body, {"w": _w(4, 8), "v": _w(8, 3), "i0": np.array(0, np.int64), "i1": np.array(1, np.int64)}


def _state_axis1() -> Case:
    body, init = state_nodes()
    out = [("out", FLOAT, ["n", 3])]
    model = make_model([helper.make_node("Identity", ["state"], ["s"]), *body],
                       [("x", FLOAT, ["n", 4]), ("state", FLOAT, [2, "n", 8])], out, init, opset=13)
    twin = make_model([helper.make_node("Transpose", ["state"], ["s"], perm=[1, 0, 2]), *body],
                      [("x", FLOAT, ["n", 4]), ("state", FLOAT, ["n", 2, 8])], out, init, opset=13)
    x = (20 * R.standard_normal((3, 4))).astype(np.float32)
    state = (4 * R.standard_normal((2, 3, 8))).astype(np.float32)
    swap = _t(1, 0, 2)
    return Case("state_axis1", model, twin, {"x": x, "state": state}, None, {"x": _same, "state": swap},
                {"x": _same, "state": swap}, "z", _same, 1, 1, 5, 5, ((2,), (1, 4)),
                {"x": (np.arange(4) // 2).reshape(1, 4), "state": (2 + np.arange(16) // 4).reshape(2, 1, 8)},
                {"x": 0.1 * x, "state": 0.1 * state})


def _held() -> Case:
    w, v = _w(4, 8), _w(8, 3)
    h = (3 * R.standard_normal((3, 1, 8))).astype(np.float32)
    nodes = [helper.make_node("ReduceSum", ["h", "axis0"], ["hs"], keepdims=0),  # [1, 8]: all three rows count
             helper.make_node("MatMul", ["x", "w"], ["xw"]),
             helper.make_node("Add", ["xw", "hs"], ["z"]),
             helper.make_node("Relu", ["z"], ["a"]),
             helper.make_node("MatMul", ["a", "v"], ["out"])]
    init = {"w": w, "v": v, "axis0": np.array([0], np.int64)}
    out = [("out", FLOAT, ["n", 3])]
    model = make_model(nodes, [("x", FLOAT, ["n", 4]), ("h", FLOAT, [3, 1, 8])], out, init, opset=13)
    twin = make_model(nodes, [("x", FLOAT, ["n", 4])], out, {**init, "h": h}, opset=13)
    x = (20 * R.standard_normal((3, 4))).astype(np.float32)
    return Case("held", model, twin, {"x": x}, {"h": h}, {"x": _same}, {"x": _same}, "z", _same, 1, 1, 5, 5,
                ((2,),), {"x": (np.arange(4) // 2).reshape(1, 4)}, {"x": 0.1 * x})


def _time_major() -> Case:
    w = _w(6, 4)
    model = make_model([helper.make_node("Transpose", ["x"], ["xt"], perm=[2, 0, 1]),  # [T, N, 6]
                        helper.make_node("MatMul", ["xt", "w"], ["z"]),
                        helper.make_node("Tanh", ["z"], ["out"])],
                       [("x", FLOAT, ["n", 6, 5])], [("out", FLOAT, [5, "n", 4])], {"w": w}, opset=13)
    twin = make_model([helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),  # [N, T, 6]
                       helper.make_node("MatMul", ["xt", "w"], ["z"]),
                       helper.make_node("Tanh", ["z"], ["out"])],
                      [("x", FLOAT, ["n", 6, 5])], [("out", FLOAT, ["n", 5, 4])], {"w": w}, opset=13)
    x = (0.8 * R.standard_normal((3, 6, 5))).astype(np.float32)
    return Case("time_major", model, twin, {"x": x}, None, {"x": _same}, {"x": _same}, "z", _t(1, 0, 2),
                (3, 1), (3, 1), (3, 1), (3, 1), ((2, 2),),
                {"x": np.repeat((np.arange(6) // 2)[:, None], 5, 1)[None]}, {"x": 0.1 * x})


def _frames() -> Case:
    hidden, frames = 5, 7
    wp, w, r = _w(6, 6), _w(1, 4 * hidden, 6), _w(1, 4 * hidden, hidden)
    init = {"wp": wp, "w": w, "r": r, "one": np.array([1], np.int64)}
    model = make_model([helper.make_node("MatMul", ["x", "wp"], ["p"]),
                        helper.make_node("Unsqueeze", ["p", "one"], ["seq"]),  # [T, 1, 6]
                        helper.make_node("LSTM", ["seq", "w", "r"], ["y"], hidden_size=hidden),
                        helper.make_node("Squeeze", ["y", "one"], ["out"])],
                       [("x", FLOAT, ["frames", 6])], [("out", FLOAT, ["frames", 1, hidden])], init, opset=13)
    twin = make_model([helper.make_node("MatMul", ["x", "wp"], ["p"]),  # [1, T, 6]
                       helper.make_node("Transpose", ["p"], ["seq"], perm=[1, 0, 2]),
                       helper.make_node("LSTM", ["seq", "w", "r"], ["y"], hidden_size=hidden),
                       helper.make_node("Squeeze", ["y", "one"], ["y2"]),
                       helper.make_node("Transpose", ["y2"], ["out"], perm=[1, 0, 2])],
                      [("x", FLOAT, ["b", frames, 6])], [("out", FLOAT, ["b", frames, hidden])], init, opset=13)
    x = (1.5 * R.standard_normal((frames, 6))).astype(np.float32)
    return Case("frames", model, twin, {"x": x}, None, {"x": lambda a: np.asarray(a)[None]},
                {"x": lambda a: np.asarray(a)[0]}, "p", lambda a: np.asarray(a)[0], (6, 0, 2), (6, 2), (6, 2), (6, 2),
                ((2, 3),), {"x": (np.arange(6) // 3)[None].repeat(frames, 0) + 2 * (np.arange(frames) // 4)[:, None]},
                {"x": np.stack([0.1 * x, -0.1 * x, 0.2 * x])}, {"x": np.stack([0.1 * x, -0.1 * x, 0.2 * x])})


CASES = {"state_axis1": _state_axis1, "held": _held, "time_major": _time_major, "frames": _frames}


@functools.lru_cache(maxsize=None)
def case(name: str) -> Case:
    return CASES[name]()


@functools.lru_cache(maxsize=None)
def loaded(name: str, which: str):
    import onnx_attr

    c = case(name)
    return onnx_attr.load(c.model if which == "model" else c.twin, strip_final_activation=False)
