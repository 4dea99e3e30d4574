"""LSTM, GRU, RNN: the converter's own recurrence, run on (value, reference) pairs."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from onnx_attr.importing.converters.recurrent import recurrent_attrs, run_recurrent
from onnx_attr.deeplift.rules.base import DecomposedInForward, NodeInfo, rule
from onnx_attr.deeplift.rules.paired import RescaleBatch, product, rescale
from onnx_attr.deeplift.rules.quantized import credited_product
from onnx_attr.deeplift.reference_cache import _storage_bytes


class ReferenceTape:
    """The reference's side of one recurrence, every value in the order the steps make them: the
    same on every call with this reference (a shared baseline over many batches), so recorded on
    the first and read back on the next ones, instead of running every step at the reference
    again (for DynamicQuantizeLSTM, a quantized product per step). Kept in the node's memo, for
    the shapes and held inputs it was recorded with, within `TAPE_BUDGET` bytes."""

    def __init__(self, key: tuple):
        self.key, self.values, self.recorded, self.cursor = key, [], False, 0

    def value(self, compute: Callable[[], Tensor]) -> Tensor:
        if not self.recorded:
            found = compute()
            self.values.append(found)
            return found
        found = self.values[self.cursor]
        self.cursor += 1
        return found

    def done(self) -> bool:
        """Ends a run: True when the tape may be kept (recorded whole within the budget)."""
        if self.recorded:
            if self.cursor != len(self.values):  # cannot happen for one key: the steps are fixed by it
                raise RuntimeError("a recurrence read back a different number of reference values")
            self.cursor = 0
            return True
        self.recorded = True
        return _storage_bytes(self.values) <= TAPE_BUDGET


#: bytes of reference values a recurrence keeps per reference (past it, each call recomputes them)
TAPE_BUDGET = 64 * 2**20


class Paired:
    """The recurrence's operations on (value, reference) pairs, with DeepLift's primitives; the
    gates' rescale multipliers computed for every step together (`RescaleBatch`), the reference's
    side read from `tape` where one was recorded."""

    def __init__(self, tape: ReferenceTape | None = None):
        self.gates = RescaleBatch()
        self.tape = tape

    def _ref(self, compute: Callable[[], Tensor]) -> Tensor:
        return compute() if self.tape is None else self.tape.value(compute)

    def linear(self, v, fn):
        return fn(v[0]), self._ref(lambda: fn(v[1]))

    def add(self, *vs):
        return sum(v[0] for v in vs[1:]) + vs[0][0], self._ref(lambda: sum(v[1] for v in vs[1:]) + vs[0][1])

    def unary(self, fn, v):
        return rescale(fn, *v, batch=self.gates, y0=self._ref(lambda: fn(v[1].detach())))

    def mul(self, a, b):
        return product(torch.mul, a[0], a[1], b[0], b[1], y0=self._ref(lambda: torch.mul(a[1].detach(), b[1].detach())))

    def where(self, mask, a, b):
        return torch.where(mask, a[0], b[0]), self._ref(lambda: torch.where(mask, a[1], b[1]))

    def stack(self, vs, dim):
        return torch.stack([v[0] for v in vs], dim), self._ref(lambda: torch.stack([v[1] for v in vs], dim))

    def quantized(self, v, weight, batch_axis):
        return credited_product(weight, v[0], v[1], batch_axis,
                                y0=self._ref(lambda: weight.exact(v[1].detach())))


@rule("LSTM", "GRU", "RNN", "DynamicQuantizeLSTM")
class RecurrentRule(DecomposedInForward):
    """Sigmoid/tanh gates by rescale, the gate products by the Shapley rule: exact through time.
    DynamicQuantizeLSTM's quantized products are credited as rules/quantized.py says."""

    def check(self, info: NodeInfo) -> None:
        recurrent_attrs(info.op_type, info.attrs)
        if any(info.variable[i] for i in (1, 2, 3, 7, 8, 9, 10, 11) if i < len(info.variable)):
            raise NotImplementedError(f"{info.op_type} whose weights vary with the input is not supported")

    def decompose(self, info, call, args, refs, memo=None):
        padded = list(args) + [None] * (12 - len(args))
        ref_padded = list(refs) + [None] * (12 - len(refs))
        pair = lambda i: None if padded[i] is None else (padded[i], ref_padded[i])  # noqa: E731
        x, w, r, b, lens, _, _, p = padded[:8]
        w, r = call.module.weights(w, r, *padded[8:])
        tape = _tape(memo, args)
        outs = run_recurrent(Paired(tape), call.module, pair(0), w, r, b, lens, [pair(5), pair(6)], p)
        if tape is not None and memo is not None:
            if tape.done():
                memo["tape"] = tape
            else:
                memo.pop("tape", None)
        if call.module.n_outputs == 1:
            return outs
        return tuple(o[0] for o in outs), tuple(o[1] for o in outs)


def _tape(memo: dict | None, args) -> ReferenceTape | None:
    """The memo's tape where it was recorded for these shapes and held values, else a new one to record."""
    if memo is None:
        return None
    key = tuple((tuple(a.shape), a.dtype, a.device, a.tolist() if not a.is_floating_point() and a.numel() <= 4096
                 else None) if isinstance(a, torch.Tensor) else a for a in args)
    found = memo.get("tape")
    if found is not None and found.key == key and found.recorded:
        return found
    return ReferenceTape(key)
