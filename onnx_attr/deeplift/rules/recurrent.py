"""LSTM, GRU, RNN: the converter's own recurrence, run on (value, reference) pairs."""

from __future__ import annotations

import torch

from onnx_attr.importing.converters.recurrent import recurrent_attrs, run_recurrent
from onnx_attr.deeplift.rules.base import DecomposedInForward, NodeInfo, rule
from onnx_attr.deeplift.rules.paired import RescaleBatch, product, rescale
from onnx_attr.deeplift.rules.quantized import credited_product


class Paired:
    """The recurrence's operations on (value, reference) pairs, with DeepLift's primitives; the
    gates' rescale multipliers computed for every step together (`RescaleBatch`)."""

    def __init__(self):
        self.gates = RescaleBatch()

    @staticmethod
    def linear(v, fn):
        return fn(v[0]), fn(v[1])

    @staticmethod
    def add(*vs):
        return sum(v[0] for v in vs[1:]) + vs[0][0], sum(v[1] for v in vs[1:]) + vs[0][1]

    def sigmoid(self, v):
        return rescale(torch.sigmoid, *v, batch=self.gates)

    def tanh(self, v):
        return rescale(torch.tanh, *v, batch=self.gates)

    @staticmethod
    def mul(a, b):
        return product(torch.mul, a[0], a[1], b[0], b[1])

    @staticmethod
    def where(mask, a, b):
        return torch.where(mask, a[0], b[0]), torch.where(mask, a[1], b[1])

    @staticmethod
    def stack(vs, dim):
        return torch.stack([v[0] for v in vs], dim), torch.stack([v[1] for v in vs], dim)

    @staticmethod
    def quantized(v, weight, batch_axis):
        return credited_product(weight, v[0], v[1], batch_axis)


@rule("LSTM", "GRU", "RNN", "DynamicQuantizeLSTM")
class RecurrentRule(DecomposedInForward):
    """Sigmoid/tanh gates by rescale, the gate products by the Shapley rule: exact through time.
    DynamicQuantizeLSTM's quantized products are credited as rules/quantized.py says."""

    def check(self, info: NodeInfo) -> None:
        recurrent_attrs(info.op_type, info.attrs)
        if any(info.variable[i] for i in (1, 2, 3, 7, 8, 9, 10, 11) if i < len(info.variable)):
            raise NotImplementedError(f"{info.op_type} whose weights vary with the input is not supported")

    def decompose(self, info, call, args, refs):
        padded = list(args) + [None] * (12 - len(args))
        ref_padded = list(refs) + [None] * (12 - len(refs))
        pair = lambda i: None if padded[i] is None else (padded[i], ref_padded[i])  # noqa: E731
        x, w, r, b, lens, _, _, p = padded[:8]
        w, r = call.module.weights(w, r, *padded[8:])
        outs = run_recurrent(Paired(), call.module, pair(0), w, r, b, lens, [pair(5), pair(6)], p)
        if call.module.n_outputs == 1:
            return outs
        return tuple(o[0] for o in outs), tuple(o[1] for o in outs)
