"""LRP and LayerLRP with Captum's `attribute()` contract, on the LRP rewrite (`rules/lrp_pass.py`).

The output's relevance is its target value (Captum's convention); one backward pass through the
rewritten module carries it to the inputs (or to a layer), each node by its rule. The
convergence delta is Captum's: target output - Σ relevance, per example. It is 0 up to rounding
for conserving rules (LRP-0/epsilon -> 0, z⁺, alpha-beta, gamma) on a model without biases;
biases and ε absorb their share otherwise.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from onnx_attr.deeplift.engine import Targets
from onnx_attr.deeplift.rules.lrp import (AlphaBeta, Composite, Epsilon, Flat, Gamma, Identity, ZBox, ZPlus,
                                         composite_of)
from onnx_attr.deeplift.rules.lrp_pass import LRPRewrite, rewrite_for_lrp
from onnx_attr.importing.rows import rows_first
from onnx_attr.methods._inputs import check_batched, example_count, prepare
from onnx_attr.methods.deeplift import _numpy_given, method_report
from onnx_attr.methods.gradient import _GradientMethod
from onnx_attr.methods.layer import layer_axes
from onnx_attr.methods.layer_names import LayerNames

__all__ = ["AlphaBeta", "Composite", "Epsilon", "Flat", "Gamma", "Identity", "LRP", "LayerLRP", "ZBox", "ZPlus"]


class LRP(_GradientMethod):
    """Layer-wise relevance propagation on an `AttributableModel`.

    `rule` is the rule of every weighted node (Conv, Gemm, MatMul...): "epsilon", "zero", "gamma",
    "alpha1beta0", "alpha2beta1", "z_plus", "z_B", "flat", or a rule object (`Epsilon(1e-6)`,
    `Gamma(0.5)`, `AlphaBeta(2, 1)`, `ZBox(low, high)`...). `composite` picks rules per node kind
    instead: a name ("epsilon_gamma_box", "epsilon_plus", "epsilon_alpha2_beta1", ...) or a
    `Composite(conv=..., dense=..., first=..., names={...})`; `rules` maps ONNX node names to rules
    (Captum's per-layer `rule` attribute). Other linear ops take the epsilon rule, activations pass
    relevance through, max pooling sends it to the window's winner (`maxpool="proportional"`:
    over the window by the inputs' shares of its sum).
    """

    multiplies_by_inputs = True  # Captum's flag for LRP

    def __init__(self, model, rule: Any = "epsilon", composite: Union[str, Composite, None] = None, *,
                 rules: Optional[Mapping[str, Any]] = None, epsilon: float = 1e-9, gamma: float = 0.25,
                 bounds: Optional[Sequence[Any]] = None, maxpool: str = "winner"):
        super().__init__(model)
        self.composite = composite_of(rule, composite, rules=rules, epsilon=epsilon, gamma=gamma, bounds=bounds,
                                      maxpool=maxpool)
        self._rewrites: dict[tuple, tuple[Any, LRPRewrite]] = {}

    def _rewrite(self, model, layers: Sequence[str] = (), layer_input: bool = False) -> tuple[Any, LRPRewrite]:
        """The LRP twin of `model` (an embedding view for token ids is a new model per call)."""
        key = (id(model.module), tuple(layers), layer_input)
        if key not in self._rewrites or self._rewrites[key][0].module is not model.module:
            found = rewrite_for_lrp(model.module, model.inputs, self.composite, layers=layers, layer_input=layer_input)
            self._rewrites = {k: v for k, v in self._rewrites.items() if k[0] == id(self.model.module)}
            self._rewrites[key] = (model, found)
        return self._rewrites[key]

    def _gradients(self, tensors: list[Tensor], attributed: list[bool], targets: Targets, output: int,
                   internal_batch_size: Optional[int] = None,
                   axes: Optional[Sequence[Optional[int]]] = None) -> tuple[list[Optional[Tensor]], Tensor]:
        """The relevance of each attributed input (the output's relevance: its target value), in the
        base's passes (an export's fixed batch, padded) on each input's batch axis (`axes`)."""
        on = [0 if t.dim() else None for t in tensors] if axes is None else list(axes)

        def run(chunk: list[Tensor], chunk_targets: Targets, kept: int) -> list:
            relevance, value = self._relevance(self.active, chunk, attributed, chunk_targets, output, kept=kept)
            return [*(_kept(r, kept, x) for r, x in zip(relevance, on)), value]

        *relevance, value = self._passes(tensors, targets, run, internal_batch_size, on,
                                         join_axes=[*(x or 0 for x in on), 0])
        return relevance, value

    def _relevance(self, model, tensors, attributed, targets, output, layers=(), layer_input=False,
                   kept: Optional[int] = None):
        _, rewrite = self._rewrite(model, layers, layer_input)
        twin = model.with_module(rewrite.module)
        leaves_wanted = bool(layers)
        live = [t.detach().requires_grad_(True) if a and not leaves_wanted else t for t, a in zip(tensors, attributed)]
        rewrite.state.active, rewrite.state.leaves = True, {}
        try:
            with torch.enable_grad():
                out = twin(*live)
                out = out[output] if isinstance(out, (tuple, list)) else out
                if kept is not None and len(targets.rows) == kept:
                    out = targets.first_rows(out, kept)  # the rows padding a fixed batch carry no relevance
                value = targets.select(out)
                wanted = ([rewrite.state.leaves.get(id(t)) for t in rewrite.taps] if leaves_wanted
                          else [t for t, a in zip(live, attributed) if a])
                present = [w for w in wanted if w is not None]
                found = iter(torch.autograd.grad(value, present, value.detach(), allow_unused=True)
                             if present and value.requires_grad else [None] * len(present))
        finally:
            rewrite.state.active, rewrite.state.leaves = False, {}
        grads = {id(w): next(found) for w in present}
        if leaves_wanted:
            relevance = [None if w is None else (grads[id(w)] if grads[id(w)] is not None else torch.zeros_like(w))
                         for w in wanted]
            return [r.detach() if r is not None else None for r in relevance], value.detach()
        result = []
        for t, a in zip(live, attributed):
            g = grads.get(id(t)) if a else None
            result.append(None if not a else (torch.zeros_like(t) if g is None else g))
        return result, value.detach()

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None,
                  return_convergence_delta: bool = False, verbose: bool = False, *,
                  output: Union[str, int, None] = None):
        """Captum's call: relevance per input element; with the delta, target output - Σ relevance."""
        prepared, n = self._prepare(inputs, None, additional_forward_args)
        check_batched(self.model, prepared, n)
        index = self._output_index(output)
        targets = self._targets(target, n, prepared, index)
        axes = prepared.row_axes()
        relevance, value = self._gradients(prepared.tensors, prepared.attributed, targets, index, axes=axes)
        delta = value.double() - sum(rows_first(r, x).reshape(n, -1).double().sum(1)
                                     for r, x in zip(relevance, axes) if r is not None)
        self._lrp_report("LRP", self.active, delta, value, index, prepared, verbose)
        out = prepared.repack(relevance)
        return (out, delta) if return_convergence_delta else out

    def _lrp_report(self, method: str, model, delta: Tensor, value: Tensor, index: int, prepared, verbose: bool,
                    **extra: Any) -> None:
        _, rewrite = self._rewrite(model, *extra.pop("tapped", ((), False)))
        self._report({**method_report(self.model, method, delta, value, index),
                      "rules": [{"node": n, "op": o, "rule": r} for n, o, r in rewrite.rules],
                      "embedding_lookups": self._used_lookups(prepared), **extra})
        if verbose:
            for node, op, rule in rewrite.rules:
                print(f"{method}: {node} ({op}): {rule}")


class LayerLRP(LRP):
    """The relevance arriving at a hidden ONNX tensor (or, with `attribute_to_layer_input`, at the
    inputs of the node computing it), named as in the ONNX graph; a list of names gives a list."""

    def __init__(self, model, layer: Union[str, Sequence[str]], rule: Any = "epsilon",
                 composite: Union[str, Composite, None] = None, **kwargs: Any):
        super().__init__(model, rule, composite, **kwargs)
        self._names = LayerNames(layer)
        self.layers = self._names.flat

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None,
                  return_convergence_delta: bool = False, attribute_to_layer_input: bool = False,
                  verbose: bool = False, *, output: Union[str, int, None] = None):
        """Captum's call; the delta (per layer) is target output - Σ that layer's relevance."""
        prepared = prepare(self.model, inputs, None, additional_forward_args, set(self.embedded_inputs))
        n = example_count(self.model, prepared)
        check_batched(self.model, prepared, n)
        index = self._output_index(output)
        targets = self._targets(target, n, prepared, index)
        axes = prepared.row_axes()
        # each layer's relevance has the layer's batch axis (the inputs of its node: taken as the same)
        found_axes = layer_axes(self.model, self.layers, prepared, self.__dict__.setdefault("_cuts", {}))
        parts, value = [], None
        for layer, at in zip(self.layers, found_axes):  # one pass per layer: the taps of one would cut the others' paths
            def run(chunk: list[Tensor], chunk_targets: Targets, kept: int, layer: str = layer, at=at) -> list:
                found, value = self._relevance(self.model, chunk, prepared.attributed, chunk_targets, index,
                                               (layer,), attribute_to_layer_input, kept=kept)
                return [value, *(_kept(r, kept, at) for r in found)]

            # an export's fixed batch, padded; the relevance joined over the passes on the layer's axis
            value, *found = self._passes(prepared.tensors, targets, run, axes=axes, join_axes=[0, at or 0])
            parts.append((found, at))
        deltas = [value.double() - sum(_per_example(r, n, at) for r in part) for part, at in parts]
        parts = [part for part, _ in parts]
        self._lrp_report("LayerLRP", self.model, deltas[0], value, index, prepared, verbose,
                     tapped=((self.layers[0],), attribute_to_layer_input), layers=self.layers,
                     convergence_delta_per_layer=[d.tolist() for d in deltas])
        if _numpy_given(inputs):
            parts = [[r.cpu().numpy() for r in part] for part in parts]
        out = self._names.pack([part[0] if len(part) == 1 else tuple(part) for part in parts])
        delta = self._names.pack(deltas)
        return (out, delta) if return_convergence_delta else out


def _kept(r: Optional[Tensor], kept: int, axis: Optional[int]) -> Optional[Tensor]:
    """Relevance of the rows kept (those padding a fixed batch dropped), on its batch axis."""
    if r is None or axis is None or r.dim() <= axis or r.shape[axis] <= kept:
        return r
    return r.narrow(axis, 0, kept)


def _per_example(r: Tensor, n: int, axis: Optional[int]) -> Tensor:
    """Σ relevance per example, the examples on `axis` (None: the tensor is the one example)."""
    if axis is None or r.dim() <= axis or r.shape[axis] != n:
        return r.double().reshape(n, -1).sum(1)
    return rows_first(r, axis).reshape(n, -1).double().sum(1)
