"""Smooth substitution: ReLU -> Softplus(β) and MaxPool -> log-sum-exp pooling, in the imported
graph, so a user can compare explanations of the model and of its smoothed twin (as in "sanity
checks for saliency on text", arXiv 2106.07475). The change in the model's outputs is measured
and reported, never assumed small.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onnx_attr.importing.converters.pooling import MaxPool
from onnx_attr.errors import InputError
from onnx_attr.deeplift.layers import replace_modules

#: Where the substituted ops live: not ONNX ops, but ours, with DeepLift rules of their own.
SMOOTH_DOMAIN = "onnx_attr.smooth"


class SmoothRelu(nn.Module):
    """Softplus with sharpness β: log(1 + exp(βx)) / β, which tends to ReLU as β grows."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = float(beta)

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x, beta=self.beta, threshold=20.0)


class LogSumExpPool(MaxPool):
    """log Σ_window exp(βx) / β over MaxPool's windows (same kernel, strides, pads, dilations,
    ceil mode); it tends to the window maximum as β grows."""

    def __init__(self, attrs: dict, beta: float):
        super().__init__(attrs)
        self.beta = float(beta)

    def windows(self, x: Tensor, pad: float = 0.0) -> Tensor:
        """[N, C, *out, K]: each output position's window, padded with `pad` (see `valid`)."""
        plan = self.plan(tuple(x.shape[2:]))
        w = F.pad(x, plan.pads, value=pad)
        for axis, (k, s, d) in enumerate(zip(self.attrs["kernel_shape"], plan.strides, plan.dilations)):
            w = w.unfold(2 + axis, (k - 1) * d + 1, s)[..., ::d]
        return w.flatten(-len(plan.strides))

    def valid(self, x: Tensor) -> Tensor:
        """[1, 1, *out, K]: which window entries are inside the input (not padding)."""
        return self.windows(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)) > 0

    def forward(self, x: Tensor) -> Tensor:
        z = (self.beta * self.windows(x)).masked_fill(~self.valid(x), float("-inf"))
        return torch.logsumexp(z, -1) / self.beta


def smooth(model, *, relu_beta: Optional[float] = 10.0, maxpool_beta: Optional[float] = 10.0,
           inputs: Any = None, seed: int = 0, measure: bool = True):
    """A copy of the imported model with every Relu a Softplus(relu_beta) and every MaxPool a
    log-sum-exp pooling (None leaves that op alone). The copy's `smoothing` attribute reports the
    nodes replaced and the change in each output (`output_change`) on `inputs`, by default on a
    seeded random sample (the first of verify's sizes both models run); `measure=False` leaves the
    change to the caller (the command line measures it on each input it explains).
    """
    for name, beta in (("relu_beta", relu_beta), ("maxpool_beta", maxpool_beta)):
        if beta is not None and not beta > 0:
            raise InputError(f"{name} must be positive, got {beta}")

    def swap(node, old):
        op = node.meta.get("onnx_op")
        if op == "Relu" and relu_beta is not None:
            return SmoothRelu(relu_beta), {"onnx_op": "Softplus", "smoothed_from": op, "onnx_domain": ""}
        if op == "MaxPool" and maxpool_beta is not None and isinstance(old, MaxPool):
            return LogSumExpPool(old.attrs, maxpool_beta), {"onnx_op": "LogSumExpPool", "smoothed_from": op,
                                                            "onnx_domain": SMOOTH_DOMAIN}
        return None

    module, nodes = replace_modules(model, swap, "smoothed")
    replaced = [{"node": n.meta.get("onnx_node"), "from": n.meta["smoothed_from"], "to": n.meta["onnx_op"],
                 "beta": relu_beta if n.meta["smoothed_from"] == "Relu" else maxpool_beta} for n in nodes]
    left = kinks_left(module)
    smoothed = model.with_module(module, notes=[f"smoothed: {len(replaced)} node(s) replaced (Relu -> "
                                                f"Softplus(beta={relu_beta}), MaxPool -> LogSumExpPool(beta="
                                                f"{maxpool_beta}))" + (f"; left as they are: {_counted(left)}"
                                                                      if left else "")])
    smoothed.smoothing = {"replaced": replaced, **({"not_smoothed": left} if left else {})}
    if measure:
        smoothed.smoothing.update(_sampled_change(model, smoothed, seed) if inputs is None else
                                  {"output_change": output_change(model, smoothed, inputs)})
    smoothed.smoothed_from = model
    return smoothed


#: piecewise-linear ops with kinks that `smooth` does not replace (a ReLU6 is a Clip): their gradients
#: stay as sharp as before, which the report says
KINKED = frozenset({"Clip", "LeakyRelu", "PRelu", "HardSigmoid", "HardSwish", "Abs", "Max", "Min", "ThresholdedRelu",
                    "Celu", "Elu", "Selu", "Shrink", "MaxRoiPool", "GlobalMaxPool", "ReduceMax", "ReduceMin"})


def kinks_left(module) -> dict[str, int]:
    """The ops of `KINKED` still in the graph, by op, counted per ONNX node."""
    from collections import Counter

    found = {(n.meta.get("onnx_node") or n.name, n.meta.get("onnx_op")) for n in module.graph.nodes
             if n.meta.get("onnx_op") in KINKED and not n.meta.get("smoothed_from")}
    return dict(sorted(Counter(op for _, op in found).items()))


def _counted(ops: dict[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in ops.items())


def _sampled_change(model, smoothed, seed: int) -> dict:
    """`output_change` on the first seeded random sample, at verify's sizes for free dims, that the
    model runs (a mel front end's STFT kernel needs hundreds of samples, not 8)."""
    from onnx_attr.errors import ForwardError
    from onnx_attr.importing.inputs import sample_inputs, sampling_specs
    from onnx_attr.importing.verify import SAMPLE_SIZES

    failure = None
    for size in SAMPLE_SIZES:
        try:
            return {"output_change": output_change(model, smoothed, sample_inputs(sampling_specs(model), seed,
                                                                                 symbolic_size=size)),
                    "measured_on": f"a random sample (seed {seed}; free dims {size})"}
        except (ForwardError, InputError) as err:
            failure = err
    return {"output_change": [], "measured_on": f"no random sample ran ({failure}); pass inputs= to measure"}


def output_change(model, smoothed, inputs: Any, after: Optional[Sequence] = None) -> list[dict]:
    """Per output, what the smoothing changed on `inputs`: max |Δ|, max |Δ| / max |original|, and,
    for [N, classes] outputs, how often the top class stays the same. `after`: the smoothed model's
    outputs on them, where the caller has run it already."""
    before = model.run(inputs)
    after = smoothed.run(inputs) if after is None else after
    report = []
    for spec, a, b in zip(model.outputs, before, after):
        if not (a.is_floating_point() and b.is_floating_point()):
            continue
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        entry = {"output": spec.name, "max_abs_change": diff,
                 "max_rel_change": diff / max(float(a.abs().max()) if a.numel() else 0.0, 1e-12)}
        if a.dim() == 2 and a.shape[1] > 1:
            entry["top1_agreement"] = float((a.argmax(1) == b.argmax(1)).double().mean())
        report.append(entry)
    return report
