"""ONNX LSTM, GRU and RNN, built from their gates.

The recurrence is written once, over an "algebra" of the few operations it needs (linear maps,
sums, elementwise activations, products, masks). `Plain` runs it on tensors: that is these converters'
forward. The DeepLift rule (`rules/recurrent.py`) runs the same code on (value, reference) pairs,
so every gate's sigmoid, every tanh and every product gets its exact rule, and the forward and
the rule cannot drift apart. Each op is a cell (one time step) plus what the three share:
layouts, directions, initial states and sequence lengths.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onnx_attr.importing.converters._common import result
from onnx_attr.importing.converters.registry import register


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

    @staticmethod
    def unary(fn: Callable[[Tensor], Tensor], v: Tensor) -> Tensor:
        return fn(v)

    mul = staticmethod(torch.mul)

    @staticmethod
    def where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return torch.where(mask, a, b)

    @staticmethod
    def stack(vs: list, dim: int) -> Tensor:
        return torch.stack(vs, dim)

    @staticmethod
    def quantized(v: Tensor, weight, batch_axis: int) -> Tensor:
        return weight.exact(v)


def _gate(alg, xt, h, w_gate: Tensor, r_gate: Tensor, bias: Tensor):
    """xt W^T + h R^T + bias: linear in each of xt and h."""
    return alg.add(alg.linear(xt, lambda v: v @ w_gate.T), alg.linear(h, lambda v: v @ r_gate.T + bias))


def lstm_cell(alg, xt, states, w, r, b, p, hidden, attrs, acts):
    h, c = states
    wi, wo, wf, wc = w.split(hidden)  # ONNX gate order: input, output, forget, cell
    ri, ro, rf, rc = r.split(hidden)
    bi, bo, bf, bc = (b[:4 * hidden] + b[4 * hidden:]).split(hidden)
    pre = [_gate(alg, xt, h, wk, rk, bk) for wk, rk, bk in ((wi, ri, bi), (wo, ro, bo), (wf, rf, bf), (wc, rc, bc))]
    return _lstm_update(alg, pre, c, p, hidden, acts, coupled=bool(attrs.get("input_forget", 0)))


def _lstm_update(alg, pre: list, c, p, hidden: int, acts: list, coupled: bool = False):
    """The LSTM's gates from their pre-activations (input, output, forget, cell), peepholes included;
    `acts` its activations f (the gates), g (the cell's input) and h (its output); `coupled`
    (input_forget): the forget gate is 1 - the input gate, as onnxruntime couples them."""
    pi, po, pf = p.split(hidden) if p is not None else (None, None, None)

    def peep(pre, peephole, cell):
        return pre if peephole is None else alg.add(pre, alg.linear(cell, lambda v: v * peephole))

    pre_i, pre_o, pre_f, pre_c = pre
    gate, cell_in, cell_out = acts
    i = alg.unary(gate, peep(pre_i, pi, c))
    f = alg.linear(i, lambda v: 1 - v) if coupled else alg.unary(gate, peep(pre_f, pf, c))
    g = alg.unary(cell_in, pre_c)
    c_new = alg.add(alg.mul(f, c), alg.mul(i, g))
    o = alg.unary(gate, peep(pre_o, po, c_new))
    return [alg.mul(o, alg.unary(cell_out, c_new)), c_new]


def quantized_lstm_cell(alg, xt, states, w, r, b, p, hidden, attrs, acts):
    """onnxruntime's DynamicQuantizeLSTM step: xt is already x·W (quantized over the whole
    sequence, `QuantizedLSTM.project`); h·R is quantized over this step's batch; then the summed
    biases, and the float LSTM gates."""
    h, c = states
    bias = b[:4 * hidden] + b[4 * hidden:]
    both = alg.linear(alg.add(xt, alg.quantized(h, r, 0)), lambda v: v + bias)
    pre = [alg.linear(both, lambda v, k=k: v[..., k * hidden:(k + 1) * hidden]) for k in range(4)]
    return _lstm_update(alg, pre, c, p, hidden, acts, coupled=bool(attrs.get("input_forget", 0)))


def gru_cell(alg, xt, states, w, r, b, p, hidden, attrs, acts):
    (h,) = states
    wz, wr, wh = w.split(hidden)  # ONNX gate order: update, reset, hidden
    rz, rr, rh = r.split(hidden)
    wbz, wbr, wbh, rbz, rbr, rbh = b.split(hidden)
    gate, candidate_act = acts
    z = alg.unary(gate, _gate(alg, xt, h, wz, rz, wbz + rbz))
    reset = alg.unary(gate, _gate(alg, xt, h, wr, rr, wbr + rbr))
    x_part = alg.linear(xt, lambda v: v @ wh.T + wbh)
    if attrs.get("linear_before_reset", 0):
        h_part = alg.mul(reset, alg.linear(h, lambda v: v @ rh.T + rbh))
    else:
        h_part = alg.linear(alg.mul(reset, h), lambda v: v @ rh.T + rbh)
    candidate = alg.unary(candidate_act, alg.add(x_part, h_part))
    keep = alg.linear(z, lambda v: 1 - v)
    return [alg.add(alg.mul(keep, candidate), alg.mul(z, h))]


def rnn_cell(alg, xt, states, w, r, b, p, hidden, attrs, acts):
    (h,) = states
    bias = b[:hidden] + b[hidden:]
    return [alg.unary(acts[0], _gate(alg, xt, h, w, r, bias))]


class Recurrent(nn.Module):
    """One ONNX recurrent op; returns as many outputs as the node declares (a bare Y for one)."""

    CELLS = {"LSTM": (lstm_cell, 4, 2, ["Sigmoid", "Tanh", "Tanh"]),
             "GRU": (gru_cell, 3, 1, ["Sigmoid", "Tanh"]),
             "RNN": (rnn_cell, 1, 1, ["Tanh"]),
             "DynamicQuantizeLSTM": (quantized_lstm_cell, 4, 2, ["Sigmoid", "Tanh", "Tanh"])}

    def __init__(self, op: str, attrs: dict, n_outputs: int):
        super().__init__()
        self.op, self.attrs, self.n_outputs = op, attrs, n_outputs
        self.hidden, self.direction, self.layout = recurrent_attrs(op, attrs)
        self.activations = activations(op, attrs)

    def forward(self, x: Tensor, w: Tensor, r: Tensor, b: Optional[Tensor] = None,
                sequence_lens: Optional[Tensor] = None, initial_h: Optional[Tensor] = None,
                initial_c: Optional[Tensor] = None, p: Optional[Tensor] = None):
        return run_recurrent(Plain, self, x, w, r, b, sequence_lens, [initial_h, initial_c], p)

    def weights(self, w: Tensor, r: Tensor, *quantization: Optional[Tensor]) -> tuple:
        """W and R as the cell reads them, indexed by direction."""
        return w, r

    def project(self, alg, x, w):
        """x as the cell takes it, for one direction's W (the float cells take x itself)."""
        return x


class QuantizedLSTM(Recurrent):
    """com.microsoft DynamicQuantizeLSTM: W [dirs, in, 4H] and R [dirs, H, 4H] in 8 bits with a
    scale and zero point per direction (or per direction and column). h is quantized over the
    whole batch at each step, as onnxruntime's serial path does (batch 1, or up to 4 rows with
    hidden_size > 256); past that it splits the batch into one chunk per thread, each with its
    own range, so its results depend on its thread count and ours match it only on one thread."""

    def __init__(self, attrs: dict, n_outputs: int):
        super().__init__("DynamicQuantizeLSTM", attrs, n_outputs)

    def forward(self, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None,
                w_scale=None, w_zero=None, r_scale=None, r_zero=None):
        w, r = self.weights(w, r, w_scale, w_zero, r_scale, r_zero)
        return run_recurrent(Plain, self, x, w, r, b, sequence_lens, [initial_h, initial_c], p)

    def weights(self, w, r, *quantization):
        """The quantized weights per direction, built once per set of weight tensors (they are the
        graph's constants: rebuilding their float64 copies and saturating pairs on every call cost
        ~1 s a call on a captcha net); other tensor objects, or one changed in place, make a new set."""
        from onnx_attr.importing.converters.quantize import tracing

        cached = self.__dict__.get("_weights_cache")  # (the very tensor objects, their versions, weights)
        if cached is not None and tracing():  # torch.export's fake tensors are other objects, with no values to
            return cached[2]  # quantize again: the weights (and their plans) of the example's eager run
        tensors = (w, r, *quantization)
        versions = tuple(None if t is None else t._version for t in tensors)
        if cached is None or cached[1] != versions or any(a is not b for a, b in zip(cached[0], tensors)):
            cached = self.__dict__["_weights_cache"] = (tensors, versions, self._build_weights(*tensors))
        return cached[2]

    def _build_weights(self, w, r, *quantization):
        from onnx_attr.importing.converters.quantize import QuantizedWeight

        w_scale, w_zero, r_scale, r_zero = quantization
        dirs = w.shape[0]

        def per_direction(q, scale, zero):
            scale, zero = scale.reshape(dirs, -1), None if zero is None else zero.reshape(dirs, -1)
            return [QuantizedWeight(q[d], scale[d], None if zero is None else zero[d]) for d in range(dirs)]

        return per_direction(w, w_scale, w_zero), per_direction(r, r_scale, r_zero)

    def project(self, alg, x, w):
        """x·W for every step at once: onnxruntime quantizes the whole sequence with one range."""
        return alg.quantized(x, w, 1)


#: the activations ONNX's recurrent ops name (case-insensitively, as onnxruntime reads them): whether each
#: takes an alpha and a beta from `activation_alpha`/`activation_beta`, their defaults, and the function
_ACTIVATIONS: dict[str, tuple[bool, bool, tuple, Callable]] = {
    "sigmoid": (False, False, (), lambda a, b: torch.sigmoid),
    "tanh": (False, False, (), lambda a, b: torch.tanh),
    "relu": (False, False, (), lambda a, b: torch.relu),
    "softsign": (False, False, (), lambda a, b: F.softsign),
    "softplus": (False, False, (), lambda a, b: F.softplus),
    "leakyrelu": (True, False, (0.01, 0.0), lambda a, b: partial(F.leaky_relu, negative_slope=a)),
    "elu": (True, False, (1.0, 0.0), lambda a, b: partial(F.elu, alpha=a)),
    "thresholdedrelu": (True, False, (1.0, 0.0), lambda a, b: lambda v: torch.where(v > a, v, torch.zeros_like(v))),
    "hardsigmoid": (True, True, (0.2, 0.5), lambda a, b: lambda v: torch.clamp(a * v + b, 0.0, 1.0)),
    "scaledtanh": (True, True, (1.0, 1.0), lambda a, b: lambda v: a * torch.tanh(b * v)),
    "affine": (True, True, (1.0, 0.0), lambda a, b: lambda v: a * v + b),
}


def _clipped(fn: Callable[[Tensor], Tensor], bound: float) -> Callable[[Tensor], Tensor]:
    """`clip`: a pre-activation bounded to [-bound, bound] first."""
    return lambda v: fn(torch.clamp(v, -bound, bound))


def activations(op: str, attrs: dict) -> list[list[Callable[[Tensor], Tensor]]]:
    """The cell's activation functions per direction (f, g, h for LSTM; f, g for GRU; f for RNN), from
    `activations` (the defaults when absent), each alpha and beta taken in order by the functions that
    use one; the same function objects at every step, so the rule batches their rescales."""
    default = Recurrent.CELLS[op][3]
    dirs = 2 if attrs.get("direction", "forward") == "bidirectional" else 1
    names = list(attrs.get("activations", [])) or default * dirs
    if len(names) != len(default) * dirs:
        raise NotImplementedError(f"{op} with {len(names)} activations {names}, where {len(default) * dirs} "
                                  f"({'/'.join(default)} per direction) are needed")
    alphas, betas = iter(attrs.get("activation_alpha", [])), iter(attrs.get("activation_beta", []))
    clip = attrs.get("clip")
    made = []
    for k, name in enumerate(names):
        key = name.decode() if isinstance(name, bytes) else str(name)
        if key.lower() not in _ACTIVATIONS:
            raise NotImplementedError(f"{op} activation {key!r} (known: {', '.join(sorted(_ACTIVATIONS))})")
        takes_alpha, takes_beta, defaults, build = _ACTIVATIONS[key.lower()]
        alpha = next(alphas, defaults[0]) if takes_alpha else None
        beta = next(betas, defaults[1]) if takes_beta else None
        # clip bounds the pre-activations; an LSTM's output activation h reads the cell, which onnxruntime
        # leaves unclipped (checked with a cell driven past the bound)
        unclipped = clip is None or (op in ("LSTM", "DynamicQuantizeLSTM") and k % len(default) == 2)
        made.append(build(alpha, beta) if unclipped else _clipped(build(alpha, beta), float(clip)))
    per = len(default)
    return [made[d * per:(d + 1) * per] for d in range(dirs)]


def recurrent_attrs(op: str, attrs: dict) -> tuple[int, str, int]:
    """hidden size, direction, layout; NotImplementedError for what the cells do not model."""
    direction = attrs.get("direction", "forward")
    activations(op, attrs)  # raises on an activation the cells do not model
    return int(attrs["hidden_size"]), direction, int(attrs.get("layout", 0))


def run_recurrent(alg, module: Recurrent, x, w, r, b, lens, initial: list, p):
    """x [seq, batch, in] (layout 0) or [batch, seq, in]; Y, Y_h (and Y_c) in the same layout."""
    cell, n_gates, n_states, _ = Recurrent.CELLS[module.op]
    hidden, dirs = module.hidden, 2 if module.direction == "bidirectional" else 1
    if module.layout == 1:
        x = alg.linear(x, lambda v: v.transpose(0, 1))
        initial = [None if s is None else alg.linear(s, lambda v: v.transpose(0, 1)) for s in initial]
    first = x[0] if isinstance(x, tuple) else x
    seq, batch = first.shape[0], first.shape[1]
    zeros = torch.zeros(dirs, batch, hidden, dtype=first.dtype, device=first.device)
    initial = [s if s is not None else (zeros if alg is Plain else (zeros, zeros)) for s in initial[:n_states]]
    for name, state in zip(("initial_h", "initial_c"), initial):  # onnxruntime refuses any other shape; a state
        value = state[0] if isinstance(state, tuple) else state  # stacked on the wrong axis would run silently
        if tuple(value.shape) != (dirs, batch, hidden):
            where = "[batch, num_directions, hidden] (layout 1)" if module.layout == 1 else \
                "[num_directions, batch, hidden]"
            raise ValueError(f"{module.op}'s {name} has shape {list(value.shape)} where {where} = "
                             f"{[batch, dirs, hidden] if module.layout == 1 else [dirs, batch, hidden]} is needed: "
                             "the state's batch must be the input sequence's")
    if lens is not None and isinstance(module, QuantizedLSTM) \
            and bool((lens < seq).any()):
        raise NotImplementedError(f"{module.op} over padded sequences (sequence_lens) is not supported "
                                  "(reverse, or quantized: onnxruntime zeroes a finished row's state)")
    if b is None:
        b = torch.zeros(dirs, 2 * n_gates * hidden, dtype=first.dtype, device=first.device)
    ys, finals = [], []
    for d in range(dirs):
        states = [alg.linear(s, lambda v: v[d]) for s in initial]
        xs = module.project(alg, x, w[d])
        outs: list = [None] * seq
        for t in (range(seq - 1, -1, -1) if module.direction == "reverse" or d == 1 else range(seq)):
            xt = alg.linear(xs, lambda v: v[t])
            new = cell(alg, xt, states, w[d], r[d], b[d], None if p is None else p[d], hidden, module.attrs,
                       module.activations[d])
            if lens is not None:  # past a sequence's end the state holds and the output is zero
                live = (t < lens).reshape(-1, 1)
                new = [alg.where(live, n, s) for n, s in zip(new, states)]
                outs[t] = alg.where(live, new[0], alg.linear(new[0], torch.zeros_like))
            else:
                outs[t] = new[0]
            states = new
        ys.append(alg.stack(outs, 0))
        finals.append(states)
    y = alg.stack(ys, 1)  # [seq, dirs, batch, H]
    outputs = [y] + [alg.stack([f[k] for f in finals], 0) for k in range(n_states)]
    if module.layout == 1:
        outputs = [alg.linear(outputs[0], lambda v: v.permute(2, 0, 1, 3))] + [
            alg.linear(s, lambda v: v.transpose(0, 1)) for s in outputs[1:]]
    outputs = outputs[:module.n_outputs]
    return outputs[0] if module.n_outputs == 1 else tuple(outputs)


@register("LSTM", 7, 14)
@register("GRU", 7, 14)
@register("RNN", 7, 14)
def convert_recurrent(node, graph):
    return result(node, Recurrent(node.operation_type, dict(node.attributes), len(node.output_values)))


@register("DynamicQuantizeLSTM", 1, domain="com.microsoft")
def convert_quantized_lstm(node, graph):
    return result(node, QuantizedLSTM(dict(node.attributes), len(node.output_values)))
