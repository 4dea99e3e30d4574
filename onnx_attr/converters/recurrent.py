"""ONNX LSTM, built from its gates.

The recurrence is written once, over an "algebra" of the few operations it needs (linear maps,
sums, sigmoid, tanh, products, masks). `Plain` runs it on tensors: that is this converter's
forward. The DeepLift rule (`rules/recurrent.py`) runs the same code on (value, reference) pairs,
so every gate's sigmoid, every tanh and every product gets its exact rule, and the forward and
the rule cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from ._common import result
from .registry import register


class Plain:
    """The recurrence's operations on plain tensors."""

    @staticmethod
    def linear(v: Tensor, fn) -> Tensor:
        return fn(v)

    @staticmethod
    def add(*vs: Tensor) -> Tensor:
        out = vs[0]
        for v in vs[1:]:
            out = out + v
        return out

    sigmoid = staticmethod(torch.sigmoid)
    tanh = staticmethod(torch.tanh)
    mul = staticmethod(torch.mul)

    @staticmethod
    def where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return torch.where(mask, a, b)

    @staticmethod
    def stack(vs: list, dim: int) -> Tensor:
        return torch.stack(vs, dim)


def lstm_recurrence(alg, x, w: Tensor, r: Tensor, b: Optional[Tensor], p: Optional[Tensor], h0, c0,
                    lens: Optional[Tensor], hidden: int, direction: str) -> tuple[Any, Any, Any]:
    """x in layout 0 ([seq, batch, input]); returns Y [seq, dirs, batch, H], Y_h, Y_c [dirs, batch, H]."""
    seq = alg_len(x)
    dirs = 2 if direction == "bidirectional" else 1
    ys, hs, cs = [], [], []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        wi, wo, wf, wc = w[d].split(hidden)  # ONNX gate order: input, output, forget, cell
        ri, ro, rf, rc = r[d].split(hidden)
        bias = b[d][:4 * hidden] + b[d][4 * hidden:] if b is not None else torch.zeros(4 * hidden, dtype=w.dtype,
                                                                                      device=w.device)
        bi, bo, bf, bc = bias.split(hidden)
        pi, po, pf = p[d].split(hidden) if p is not None else (None, None, None)
        h, c = alg.linear(h0, lambda t: t[d]), alg.linear(c0, lambda t: t[d])
        outs: list = [None] * seq
        for t in (range(seq - 1, -1, -1) if reverse else range(seq)):
            xt = alg.linear(x, lambda v: v[t])

            def pre(wg, rg, bg, pg, cell):
                terms = [alg.linear(xt, lambda v: v @ wg.T), alg.linear(h, lambda v: v @ rg.T + bg)]
                if pg is not None:
                    terms.append(alg.linear(cell, lambda v: v * pg))
                return alg.add(*terms)

            i = alg.sigmoid(pre(wi, ri, bi, pi, c))
            f = alg.sigmoid(pre(wf, rf, bf, pf, c))
            g = alg.tanh(pre(wc, rc, bc, None, c))
            c_new = alg.add(alg.mul(f, c), alg.mul(i, g))
            o = alg.sigmoid(pre(wo, ro, bo, po, c_new))
            h_new = alg.mul(o, alg.tanh(c_new))
            if lens is not None:  # past a sequence's end the state holds and the output is zero
                live = (t < lens).reshape(-1, 1)
                h_new, c_new = alg.where(live, h_new, h), alg.where(live, c_new, c)
                outs[t] = alg.where(live, h_new, alg.linear(h_new, torch.zeros_like))
            else:
                outs[t] = h_new
            h, c = h_new, c_new
        ys.append(alg.stack(outs, 0))
        hs.append(h)
        cs.append(c)
    return alg.stack(ys, 1), alg.stack(hs, 0), alg.stack(cs, 0)


def alg_len(x) -> int:
    return (x[0] if isinstance(x, tuple) else x).shape[0]


def lstm_attrs(attrs: dict) -> tuple[int, str, int]:
    """hidden size, direction, layout; NotImplementedError for what the recurrence does not model."""
    direction = attrs.get("direction", "forward")
    if isinstance(direction, bytes):
        direction = direction.decode()
    activations = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    dirs = 2 if direction == "bidirectional" else 1
    if activations and activations != ["Sigmoid", "Tanh", "Tanh"] * dirs:
        raise NotImplementedError(f"LSTM activations {activations} (only the default Sigmoid/Tanh/Tanh)")
    if attrs.get("clip") is not None:
        raise NotImplementedError("LSTM with clip is not supported")
    if attrs.get("input_forget", 0):
        raise NotImplementedError("LSTM with input_forget=1 is not supported")
    return int(attrs["hidden_size"]), direction, int(attrs.get("layout", 0))


class LSTM(nn.Module):
    """Returns as many of (Y, Y_h, Y_c) as the node declares; a bare Y when it declares one."""

    def __init__(self, hidden: int, direction: str, layout: int, n_outputs: int = 3):
        super().__init__()
        self.hidden, self.direction, self.layout, self.n_outputs = hidden, direction, layout, n_outputs

    def forward(self, x: Tensor, w: Tensor, r: Tensor, b: Optional[Tensor] = None,
                sequence_lens: Optional[Tensor] = None, initial_h: Optional[Tensor] = None,
                initial_c: Optional[Tensor] = None, p: Optional[Tensor] = None):
        return run_lstm(Plain, self, x, w, r, b, sequence_lens, initial_h, initial_c, p)


def run_lstm(alg, module: LSTM, x, w, r, b, lens, h0, c0, p):
    """Layouts, default states and the sequence-length check around `lstm_recurrence`."""
    dirs = 2 if module.direction == "bidirectional" else 1
    if module.layout == 1:  # [batch, seq, input] -> [seq, batch, input]; states [batch, dirs, H]
        x = alg.linear(x, lambda v: v.transpose(0, 1))
        h0 = None if h0 is None else alg.linear(h0, lambda v: v.transpose(0, 1))
        c0 = None if c0 is None else alg.linear(c0, lambda v: v.transpose(0, 1))
    first = x[0] if isinstance(x, tuple) else x
    batch = first.shape[1]
    zeros = torch.zeros(dirs, batch, module.hidden, dtype=first.dtype, device=first.device)
    h0 = h0 if h0 is not None else (zeros if alg is Plain else (zeros, zeros))
    c0 = c0 if c0 is not None else (zeros if alg is Plain else (zeros, zeros))
    if lens is not None and module.direction != "forward" and bool((lens < first.shape[0]).any()):
        raise NotImplementedError("reverse LSTM over padded sequences (sequence_lens) is not supported")
    y, yh, yc = lstm_recurrence(alg, x, w, r, b, p, h0, c0, lens, module.hidden, module.direction)
    if module.layout == 1:  # Y [batch, seq, dirs, H]; states [batch, dirs, H]
        y = alg.linear(y, lambda v: v.permute(2, 0, 1, 3))
        yh = alg.linear(yh, lambda v: v.transpose(0, 1))
        yc = alg.linear(yc, lambda v: v.transpose(0, 1))
    outs = (y, yh, yc)[:module.n_outputs]
    return outs[0] if module.n_outputs == 1 else outs


@register("LSTM", 7, 14)
def convert_lstm(node, graph):
    hidden, direction, layout = lstm_attrs(dict(node.attributes))
    return result(node, LSTM(hidden, direction, layout, len(node.output_values)))
