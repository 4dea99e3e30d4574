"""Layer and neuron attribution at any ONNX tensor, by its ONNX name.

Both are the plain methods on a re-cut model (`onnx_attr.deeplift.layers`): a neuron method attributes a
target of the model cut after the tensor; a layer method attributes the tensor fed in as an
input, the original inputs still feeding the paths that bypass it. LayerDeepLift (in
`deeplift.py`) taps the tensor in place instead, so the reference pass stays the baselines'.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from onnx_attr.errors import InputError
from onnx_attr.deeplift.layers import (cut_groups, layer_inputs, layers_delta, nested_pair, refuse_settings_as_layers,
                                       tensor_as_output, tensor_values, tensors_as_inputs)
from onnx_attr.importing.batch import probe
from onnx_attr.importing.rows import path_runs, rows_back, rows_first
from onnx_attr.methods._inputs import check_batched, example_count, prepare
from onnx_attr.methods.base import AttributionMethod, make_targets, output_report
from onnx_attr.methods.layer_names import LayerNames
from onnx_attr.methods.deeplift import DeepLift, DeepLiftShap, method_report
from onnx_attr.methods.gradient import GradientShap, IntegratedGradients, Saliency, integration_rule
from onnx_attr.methods.noise_tunnel import _repeat_target


def refuse_layer_input(asked: bool, name: str) -> None:
    """Captum's `attribute_to_layer_input`: a layer here is an ONNX tensor, so its input is
    another tensor, to be named itself. False (Captum's default) is accepted as is."""
    if asked:
        raise InputError(f"{name}=True: layers are ONNX tensors here, so name the tensor that feeds the layer "
                         "(`onnx-attr inspect --json` lists them) and keep this False")


def refuse_nested(model, layers: Sequence[str], method: str) -> None:
    """Methods that move several layers together along one path: a layer computed from another
    would hold the upstream one's change back (Captum raises there too)."""
    pair = nested_pair(model, layers)
    if pair is not None:
        how = "is named twice" if pair[0] == pair[1] else f"is computed from layer {pair[0]!r}"
        raise InputError(f"{method}: layer {pair[1]!r} {how}, and the layers move together along one path, which "
                         f"would hold {pair[0]!r}'s change back at {pair[1]!r}; attribute each of them in its own call")


def uses_apart(model, layers: Sequence[str], feeds: Sequence[Sequence[str]], cache: dict) -> tuple[Any, list]:
    """A sibling of `model` in which each tensor that several of the `layers`' nodes read reaches
    each of them through its own Identity, named `tensor@layer`, and the feeds renamed so: each is
    then a tensor of its own, none computed from another, so they are cut together and each gets
    the share of the paths through its reader, as Captum's hook on each module's input gives
    (their sum is the tensor's own attribution). Built once per set of layers (`cache`)."""
    import copy

    from torch import fx, nn

    from onnx_attr.deeplift.layers import tensor_node

    key = tuple(layers)
    if key not in cache:
        counts = Counter(t for f in feeds for t in f)
        module = fx.GraphModule(model.module, copy.deepcopy(model.module.graph))
        renamed = []
        for index, (layer, f) in enumerate(zip(layers, feeds)):
            reader = tensor_node(module, layer)
            names = []
            for t in f:
                if counts[t] < 2:
                    names.append(t)
                    continue
                source, name = tensor_node(module, t), f"{t}@{layer}"
                target = f"layer_input_use_{index}_{len(names)}"
                module.add_submodule(target, nn.Identity())
                with module.graph.inserting_before(reader):
                    use = module.graph.call_module(target, (source,))
                use.meta.update(onnx_op="Identity", onnx_domain="", onnx_opset=source.meta.get("onnx_opset", 0),
                                onnx_node=name, onnx_tensor=name, onnx_attrs={}, copy_of=t)
                reader.replace_input_with(source, use)
                names.append(name)
            renamed.append(names)
        module.recompile()
        cache[key] = (model.with_module(module), renamed)
    return cache[key]


def check_grad_kwargs(grad_kwargs: Optional[dict]) -> None:
    """Captum's `grad_kwargs` (passed on to torch.autograd.grad there): the gradients here are
    taken by the method itself, which already reads 0 for a layer that does not reach the
    output, as materialize_grads=True does; any other option would be dropped, so it is refused."""
    if grad_kwargs is None:
        return
    if not isinstance(grad_kwargs, dict) or set(grad_kwargs) - {"materialize_grads"}:
        raise InputError(f"grad_kwargs {grad_kwargs!r}: the gradients here are taken by onnx-attr itself, which "
                         "reads 0 for a layer that does not reach the output (materialize_grads=True); no other "
                         "option applies, so leave grad_kwargs out")


class LayerMethod(AttributionMethod):
    """A method at hidden tensor(s) `layer`, by ONNX name (a list or tuple for several, as Captum's
    list of layers): the tensors are read in a forward pass, and fed into the model re-cut at them
    (`tensors_as_inputs`), the original inputs still feeding the paths that bypass them."""

    def __init__(self, model, layer: Union[str, Sequence[str]], multiply_by_inputs: Optional[bool] = None):
        super().__init__(model, multiply_by_inputs)
        self.layer = layer
        self._names = LayerNames(layer)
        self.layers = self._named = self._names.flat
        self._packer = self._names  # how the results are packed: as `layer` was given, or by its inputs
        self._given = model  # `model` may be a sibling per call (`_select_layers`: a shared layer input)

    _readers_apart = False  # see `_select_layers`

    def _select_layers(self, to_input: bool) -> None:
        """Captum's `attribute_to_layer_input`: the tensors each named one is computed from (its ONNX
        node's data inputs, `layer_inputs`); a layer reading several gives a tuple, as a module with
        several inputs does. A tensor read by several of the named layers' nodes: where the method
        substitutes the layers' values (`_readers_apart`: LayerIntegratedGradients, whose hooks
        replace each module's input), each reader's share (`uses_apart`); else each gets the tensor's
        own, as Captum's gradient at the one input tensor the modules share. Set per call, so the
        next call starts from the names given."""
        self.model, self.layers, self._packer = self._given, self._named, self._names
        if not to_input:
            return
        feeds = [layer_inputs(self.model, name) for name in self._named]
        if self._names.nested and any(len(f) > 1 for f in feeds):
            several = {n: f for n, f in zip(self._named, feeds) if len(f) > 1}
            raise InputError(f"attribute_to_layer_input=True: {several} read several tensors each inside a group of "
                             "layers; name the tensors to attribute as the layers instead")
        if self._readers_apart and len({t for f in feeds for t in f}) < sum(map(len, feeds)):
            self.model, feeds = uses_apart(self._given, self._named, feeds, self.__dict__.setdefault("_apart", {}))
        self.layers = [t for f in feeds for t in f]
        if not self._names.nested:
            packed = [f[0] if len(f) == 1 else tuple(f) for f in feeds]
            self._packer = LayerNames(packed[0] if isinstance(self.layer, str) else type(self._names.given)(packed))

    def _at_layers(self, inputs: Any, baselines: Any, additional_forward_args: Any,
                   attribute_to_layer_input: bool = False, samples: Optional[tuple[int, int]] = None):
        """The prepared call and the layers' values for the inputs and the baselines. `samples`:
        (examples, draws per example) where the inputs were drawn several times per example (the
        held inputs with the examples' rows are repeated alike: `gradient.with_samples`)."""
        from onnx_attr.methods.gradient import with_samples

        self._select_layers(attribute_to_layer_input)
        every = {s.name for s in self.model.inputs}  # inputs are fed, not attributed: integers allowed
        prepared = prepare(self.model, inputs, baselines, additional_forward_args, embedded=every)
        if samples is not None:
            with_samples(prepared, *samples)
        self.n = example_count(self.model, prepared)
        check_batched(self.model, prepared, self.n)
        refuse_settings_as_layers(self.model, self.layers, prepared.tensors)
        self.layer_axes = self._layer_axes(prepared)
        h = tensor_values(self.model, self.layers, prepared.tensors)
        h0 = tensor_values(self.model, self.layers, prepared.baselines)
        return prepared, h, h0

    def _layer_axes(self, prepared) -> list[Optional[int]]:
        return layer_axes(self.model, self.layers, prepared, self.__dict__.setdefault("_cuts", {}))

    def _layer_gradients(self, h: Sequence[Tensor], tensors: Sequence[Tensor], targets, index: int,
                         internal_batch_size: Optional[int] = None,
                         axes: Optional[Sequence[Optional[int]]] = None) -> list[Tensor]:
        """d out[target] / d layer at layer values h (the inputs `tensors` feeding the bypasses, on
        their batch `axes`; the layers on theirs), through every path: layers computed from one
        another are cut one at a time (`cut_groups`), as Captum's hooks read each."""
        grads: list[Optional[Tensor]] = [None] * len(h)
        for group in cut_groups(self.model, self.layers):
            at = [h[i] for i in group]
            cut = tensors_as_inputs(self.model, [self.layers[i] for i in group], at)
            on = None if axes is None else [*(self.layer_axes[i] for i in group), *axes]
            found, _ = self._gradients_on(cut, [*at, *tensors], [True] * len(at) + [False] * len(tensors), targets,
                                          index, internal_batch_size, on)
            for i, g in zip(group, found):
                grads[i] = g
        return grads

    def _pack(self, per_layer: Sequence[Tensor], as_numpy: bool) -> Any:
        """One result per layer, in the container the layer was named in; numpy in, numpy out."""
        return self._packer.pack([a.detach().cpu().numpy() if as_numpy else a for a in per_layer])


class LayerIntegratedGradients(LayerMethod):
    """Integrated gradients of hidden tensor `layer`: (h - h0) · ∫ ∂f/∂h along h0 → h, where h and
    h0 are the tensor's values for the inputs and the baselines, as Captum's LayerIntegratedGradients.

    `layer` may be a list (or tuple) of tensor names, as Captum's list of layers (or a module with
    several outputs): they are fed together, moved along one path, and the attributions come back
    in a container of the same kind.

    The inputs may be token ids: only the layer is attributed, so an embedding output is the
    usual layer for text. Completeness holds at the layer when every path from the inputs to the
    output passes through it; the delta says how far off it is otherwise.
    """

    _multiply_by_inputs = True  # Captum's default
    _readers_apart = True

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  n_steps: int = 50, method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  return_convergence_delta: bool = False, attribute_to_layer_input: bool = False,
                  grad_kwargs: Optional[dict] = None, *, output: Union[str, int, None] = None):
        check_grad_kwargs(grad_kwargs)
        prepared, h, h0 = self._at_layers(inputs, baselines, additional_forward_args, attribute_to_layer_input)
        refuse_nested(self.model, self.layers, "LayerIntegratedGradients")
        cut = tensors_as_inputs(self.model, self.layers, h, self.layer_axes)
        ig = IntegratedGradients(cut, multiply_by_inputs=self._multiply_by_inputs)
        attributions, delta = ig.attribute(tuple(h), tuple(h0), target, tuple(prepared.tensors), n_steps=n_steps,
                                           method=method, internal_batch_size=internal_batch_size,
                                           return_convergence_delta=True, output=output)
        self.last_report = {**ig.last_report, "method": "LayerIntegratedGradients", "layer": self.layer}
        out = self._pack(attributions, prepared.as_numpy)
        return (out, delta) if return_convergence_delta else out


def neuron_input(model, layer: str) -> str:
    """Captum's `attribute_to_neuron_input`: the one tensor the node computing `layer` reads."""
    feeds = layer_inputs(model, layer)
    if len(feeds) != 1:
        raise InputError(f"attribute_to_neuron_input=True: the node computing {layer!r} reads {feeds}; name the one "
                         "the neuron is in as the layer")
    return feeds[0]


def neuron_model(model, layer: str):
    """The model cut after tensor `layer` (its only output), with the examples of `model`: where
    the full model's rows mix (frames that only look like a batch), the cut one's inputs are one
    whole example too, though its own rows might not mix (`batch.probe`)."""
    cut = tensor_as_output(model, layer)
    cut.__dict__["batch_parent"] = model
    return cut


def layer_axes(model, layers: Sequence[str], prepared, cuts: dict) -> list[Optional[int]]:
    """Each layer's batch axis on this call (None: one whole example): where the model cut after
    it doubles its rows (`batch.probe`, with the full model's examples); `cuts` keeps the cut
    models (and so their probes) between calls."""
    axes = []
    for name in layers:
        if name not in cuts:
            cuts[name] = neuron_model(model, name)
        axes.append(probe(cuts[name], prepared.tensors, prepared.axes or [0] * len(prepared.tensors)).outputs[0])
    return axes


class _NeuronMethod(AttributionMethod):
    """A method attributing element `neuron_selector` (an int or a tuple, batch axis excluded, with
    slices or a callable as Captum allows) of hidden tensor `layer` to the inputs: the method
    itself on the model cut after the tensor, the selector its target. Each subclass passes on
    exactly the arguments its method takes."""

    method: type

    def __init__(self, model, layer: str, device_ids: Any = None, **options: Any):
        from onnx_attr.methods.base import constructor_options

        super().__init__(model)  # device_ids: Captum's DataParallel option, nothing to do here
        takes = constructor_options(self.method)
        if set(options) - set(takes):
            raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s) "
                            f"{sorted(set(options) - set(takes))}; it takes {['device_ids', *takes]}")
        self.layer, self._options = layer, options
        self.inner = self.method(neuron_model(model, layer), **options)
        self._at_input: Optional[AttributionMethod] = None  # the method at the layer's input, made when asked

    @property
    def multiplies_by_inputs(self) -> bool:
        return getattr(self.inner, "multiplies_by_inputs", False)

    def _attribute(self, inputs: Any, neuron_selector: Any, attribute_to_neuron_input: bool, **arguments: Any):
        inner = self.inner
        if attribute_to_neuron_input:  # Captum's: the neuron in the tensor the layer's node reads
            if self._at_input is None:
                self._at_input = self.method(neuron_model(self.model, neuron_input(self.model, self.layer)),
                                             **self._options)
            inner = self._at_input
        _check_neuron(self.layer, inner.model.outputs[0].shape, neuron_selector)
        result = inner.attribute(inputs, target=neuron_selector, **arguments)
        self.last_report = {**inner.last_report, "method": type(self).__name__, "layer": self.layer}
        return result


def _check_neuron(layer: str, shape: Optional[tuple], selector: Any) -> None:
    """A neuron is one element of the layer: an index per axis after the batch's (Captum's
    `neuron_selector`; slices or a callable sum a region, checked where they are read). None, or a
    count of indices that cannot be one, is refused here, naming the layer (not "the output")."""
    if callable(selector) or isinstance(selector, Tensor):
        return
    indices = selector if isinstance(selector, tuple) else (selector,)
    if selector is not None and (shape is None or not all(isinstance(i, int) for i in indices)
                                 or len(shape) - 1 <= len(indices) <= len(shape)
                                 or all(d == 1 for d in shape[1 + len(indices):])):  # what is left holds one value
        return
    axes = "?" if shape is None else max(len(shape) - 1, 0)
    example = ",".join("0" * max(axes, 1)) if shape is not None else "i,j"
    where = f"layer {layer!r}" + ("" if shape is None else " [" + ", ".join(str(d) for d in shape) + "]")
    got = "none" if selector is None else f"{selector!r}"
    raise InputError(f"a neuron method explains one element of {where}: give it as neuron_selector, one index per "
                     f"axis after the batch's ({axes}; the CLI's --target {example}); got {got}")


class NeuronDeepLift(_NeuronMethod):
    """DeepLift of one hidden unit: Σ attributions = h_n(x) - h_n(x0), exactly."""

    method = DeepLift

    def attribute(self, inputs: Any, neuron_selector: Any, baselines: Any = None, additional_forward_args: Any = None,
                  attribute_to_neuron_input: bool = False, custom_attribution_func: Any = None, *,
                  return_convergence_delta: bool = False, **options: Any):
        """Captum's argument order; the delta (keyword only) is ours."""
        return self._attribute(inputs, neuron_selector, attribute_to_neuron_input, baselines=baselines,
                               additional_forward_args=additional_forward_args,
                               custom_attribution_func=custom_attribution_func,
                               return_convergence_delta=return_convergence_delta, **options)


class NeuronIntegratedGradients(_NeuronMethod):
    """Integrated gradients of one hidden unit (`n_steps`, `method` as for IntegratedGradients)."""

    method = IntegratedGradients

    def attribute(self, inputs: Any, neuron_selector: Any, baselines: Any = None, additional_forward_args: Any = None,
                  n_steps: int = 50, method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  attribute_to_neuron_input: bool = False, *, return_convergence_delta: bool = False,
                  **options: Any):
        """Captum's argument order; the delta (keyword only) is ours."""
        return self._attribute(inputs, neuron_selector, attribute_to_neuron_input, baselines=baselines,
                               additional_forward_args=additional_forward_args, n_steps=n_steps, method=method,
                               internal_batch_size=internal_batch_size,
                               return_convergence_delta=return_convergence_delta, **options)


class LayerActivation(LayerMethod):
    """The layer's values for the inputs (no target: they do not depend on one)."""

    _multiply_by_inputs = True  # Captum's flag

    def attribute(self, inputs: Any, additional_forward_args: Any = None, attribute_to_layer_input: bool = False):
        self._select_layers(attribute_to_layer_input)
        every = {s.name for s in self.model.inputs}
        prepared = prepare(self.model, inputs, None, additional_forward_args, embedded=every)
        self.last_report = {"method": "LayerActivation", "layer": self.layer}
        return self._pack(tensor_values(self.model, self.layers, prepared.tensors), prepared.as_numpy)


class _LayerGradientMethod(LayerMethod):
    """Methods built on d out[target] / d layer at the inputs' layer values."""

    def _at_inputs(self, inputs: Any, target: Any, additional_forward_args: Any, output: Union[str, int, None],
                   attribute_to_layer_input: bool):
        prepared, h, _ = self._at_layers(inputs, None, additional_forward_args, attribute_to_layer_input)
        index = self._output_index(output)
        grads = self._layer_gradients(h, prepared.tensors, self._targets(target, self.n, prepared, index), index,
                                      axes=prepared.row_axes())
        self._report({**output_report(self.model, type(self).__name__, index), "layer": self.layer})
        return prepared, h, grads


class LayerGradientXActivation(_LayerGradientMethod):
    """Layer values times d out / d layer (the gradient alone with multiply_by_inputs=False)."""

    _multiply_by_inputs = True  # Captum's default

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None,
                  attribute_to_layer_input: bool = False, grad_kwargs: Optional[dict] = None, *,
                  output: Union[str, int, None] = None):
        check_grad_kwargs(grad_kwargs)
        prepared, h, grads = self._at_inputs(inputs, target, additional_forward_args, output, attribute_to_layer_input)
        return self._pack([g * v if self._multiply_by_inputs else g for g, v in zip(grads, h)], prepared.as_numpy)


class LayerGradCam(_LayerGradientMethod):
    """GradCAM (Selvaraju et al.): the layer's gradient averaged over its spatial axes (axes 2 and
    on) weights its channels (axis 1), summed over them (keepdim) unless attr_dim_summation=False;
    relu_attributions keeps the positive part. Captum's definition."""

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None,
                  attribute_to_layer_input: bool = False, relu_attributions: bool = False,
                  attr_dim_summation: bool = True, grad_kwargs: Optional[dict] = None, *,
                  output: Union[str, int, None] = None):
        check_grad_kwargs(grad_kwargs)
        prepared, h, grads = self._at_inputs(inputs, target, additional_forward_args, output, attribute_to_layer_input)
        out = []
        for g, v, axis in zip(grads, h, self.layer_axes):  # channels and space counted after the batch axis
            g, v = rows_first(g, axis), rows_first(v, axis)
            weights = g.mean(dim=tuple(range(2, g.dim())), keepdim=True) if g.dim() > 2 else g
            scaled = (weights * v).sum(1, keepdim=True) if attr_dim_summation else weights * v
            out.append(rows_back(torch.relu(scaled) if relu_attributions else scaled, axis))
        return self._pack(out, prepared.as_numpy)


class _LayerPathMethod(LayerMethod):
    """Methods that move the inputs from the baselines to themselves and read the layer's values
    and gradients at each step."""

    def _along_path(self, inputs: Any, baselines: Any, target: Any, additional_forward_args: Any,
                    output: Union[str, int, None], alphas, attribute_to_layer_input: bool,
                    internal_batch_size: Optional[int]):
        """Per step (K of them): the layers' values and d out / d layer, each [K·N, ...] step-major
        with the examples on axis 0 (`rows_first`; `rows_back` with `self.layer_axes` undoes it)."""
        prepared, h, h0 = self._at_layers(inputs, baselines, additional_forward_args, attribute_to_layer_input)
        n, axes = self.n, prepared.row_axes()
        index = self._output_index(output)
        targets = self._targets(target, n, prepared, index)
        values, grads = [], []
        runs = path_runs(prepared.tensors, prepared.baselines, prepared.attributed, axes, n, alphas)
        steps = len(alphas) // len(runs)  # steps per run: all stacked, or one at a time
        for scaled in runs:
            at = tensor_values(self.model, self.layers, scaled)
            g = self._layer_gradients(at, scaled, targets.repeat(steps), index, internal_batch_size, axes)
            values.append([rows_first(v, a) for v, a in zip(at, self.layer_axes)])
            grads.append([rows_first(d, a) for d, a in zip(g, self.layer_axes)])
        values = [torch.cat(parts) for parts in zip(*values)]
        grads = [torch.cat(parts) for parts in zip(*grads)]
        return prepared, targets, index, values, grads, n


class InternalInfluence(_LayerPathMethod):
    """∫ d out / d layer along the straight path of the inputs from the baselines (Leino et al.):
    the layer's gradient integrated, not multiplied by any difference. Captum's definition."""

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  n_steps: int = 50, method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  attribute_to_layer_input: bool = False, grad_kwargs: Optional[dict] = None, *,
                  output: Union[str, int, None] = None):
        check_grad_kwargs(grad_kwargs)
        points, weights = integration_rule(method, n_steps)
        prepared, _, index, _, grads, n = self._along_path(inputs, baselines, target, additional_forward_args, output,
                                                           points, attribute_to_layer_input, internal_batch_size)
        out = [rows_back(sum(float(w) * g[s * n:(s + 1) * n].double() for s, w in enumerate(weights)).to(g.dtype), a)
               for g, a in zip(grads, self.layer_axes)]
        self._report({**output_report(self.model, "InternalInfluence", index), "layer": self.layer,
                      "n_steps": n_steps, "rule": method})
        return self._pack(out, prepared.as_numpy)


class LayerConductance(_LayerPathMethod):
    """Σ over steps of d out / d layer · the change of the layer to the next step (Dhamdhere et
    al.), with the n_steps + 1 points of the rule as Captum takes them; Σ = f(x) - f(x0) up to the
    discretisation (the delta says how far)."""

    _multiply_by_inputs = True  # Captum's flag; it has no option

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  n_steps: int = 50, method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  return_convergence_delta: bool = False, attribute_to_layer_input: bool = False,
                  grad_kwargs: Optional[dict] = None, *, output: Union[str, int, None] = None):
        check_grad_kwargs(grad_kwargs)
        points, _ = integration_rule(method, n_steps + 1)
        prepared, targets, index, values, grads, n = self._along_path(
            inputs, baselines, target, additional_forward_args, output, points, attribute_to_layer_input,
            internal_batch_size)
        out = [(g[:-n] * (v[n:] - v[:-n])).reshape(n_steps, n, *v.shape[1:]).sum(0) for g, v in zip(grads, values)]
        axes = prepared.row_axes()
        change = (self._value(prepared.tensors, targets, index, axes=axes).double()
                  - self._value(prepared.baselines, targets, index, axes=axes).double())
        delta = layers_delta(self.model, self.layers, [a.reshape(n, -1).double().sum(1) for a in out], change)
        out = [rows_back(a, axis) for a, axis in zip(out, self.layer_axes)]
        self._report({**method_report(self.model, "LayerConductance", delta, change, index), "layer": self.layer,
                      "n_steps": n_steps, "rule": method})
        result = self._pack(out, prepared.as_numpy)
        return (result, delta) if return_convergence_delta else result


class LayerGradientShap(LayerMethod):
    """GradientShap at a layer: per drawn sample (a baseline row, Gaussian noise on the inputs, a
    random point on the path), d out / d layer at that point times the layer's change from the
    baseline to the noisy input, averaged over the samples. Draws in Captum's order."""

    _multiply_by_inputs = True  # Captum's default

    def attribute(self, inputs: Any, baselines: Any, n_samples: int = 5, stdevs: Union[float, Sequence[float]] = 0.0,
                  target: Any = None, additional_forward_args: Any = None, return_convergence_delta: bool = False,
                  attribute_to_layer_input: bool = False, grad_kwargs: Optional[dict] = None, *,
                  output: Union[str, int, None] = None):
        from onnx_attr.methods.gradient import along, draw_shap_samples, sample_axes

        check_grad_kwargs(grad_kwargs)
        noisy, drawn, alpha, n, repack, as_numpy = draw_shap_samples(
            inputs, baselines, n_samples, stdevs, "LayerGradientShap",
            sample_axes(self, inputs, additional_forward_args), self.model)
        prepared, h, h0 = self._at_layers(repack(noisy), repack(drawn), additional_forward_args,
                                          attribute_to_layer_input, samples=(n, n_samples))
        rows, axes = self.n, prepared.row_axes()
        scaled = [b + along(alpha.to(t.dtype), t, x).to(t.device) * (t - b) if a and t.is_floating_point() else t
                  for t, b, a, x in zip(prepared.tensors, prepared.baselines, prepared.attributed, axes)]
        values = tensor_values(self.model, self.layers, scaled)
        index = self._output_index(output)
        targets = self._targets(_repeat_target(target, n, n_samples), rows, prepared, index)
        grads = self._layer_gradients(values, scaled, targets, index, axes=axes)
        per_row = [rows_first(g * (v - v0) if self._multiply_by_inputs else g, x)
                   for g, v, v0, x in zip(grads, h, h0, self.layer_axes)]
        change = (self._value(prepared.tensors, targets, index, axes=axes).double()
                  - self._value(prepared.baselines, targets, index, axes=axes).double())
        delta = layers_delta(self.model, self.layers, [rows_first(g * (v - v0), x).reshape(rows, -1).double().sum(1)
                                                       for g, v, v0, x in zip(grads, h, h0, self.layer_axes)], change)
        self._report({**method_report(self.model, "LayerGradientShap", delta, change, index), "layer": self.layer,
                      "n_samples": n_samples, "warnings": []})  # one random point per row: no vanishing delta
        out = self._pack([rows_back(a.reshape(n, n_samples, *a.shape[1:]).mean(1), x)
                          for a, x in zip(per_row, self.layer_axes)], as_numpy)
        return (out, delta) if return_convergence_delta else out


class LayerDeepLiftShap(LayerMethod):
    """LayerDeepLift averaged over a distribution of baselines (rows), as Captum's: the delta has
    one entry per (example, baseline) pair, example-major."""

    def __init__(self, model, layer: Union[str, Sequence[str]], multiply_by_inputs: bool = True, *,
                 rule: str = "rescale", gradient_fallback: bool = False):
        from onnx_attr.methods.deeplift import LayerDeepLift

        super().__init__(model, layer)
        self.inner = LayerDeepLift(model, layer, multiply_by_inputs, rule=rule, gradient_fallback=gradient_fallback)

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.inner.multiplies_by_inputs

    def attribute(self, inputs: Any, baselines: Any, target: Any = None, additional_forward_args: Any = None,
                  return_convergence_delta: bool = False, attribute_to_layer_input: bool = False,
                  custom_attribution_func: Any = None, *, output: Union[str, int, None] = None):
        from onnx_attr.methods.deeplift import _baseline_rows, baseline_axes, call_baseline

        baselines = call_baseline(baselines, inputs)
        if baselines is not None:
            every = {s.name for s in self.model.inputs}
            axes = baseline_axes(prepare(self.model, inputs, None, additional_forward_args, every), baselines, self.model)
        rows = _baseline_rows(baselines, axes) if baselines is not None else []
        if not rows:
            raise InputError("LayerDeepLiftShap needs a distribution of baselines (rows on axis 0)")
        sums, deltas, change = None, [], []
        for row in rows:
            got, delta = self.inner.attribute(inputs, row, target, additional_forward_args, True,
                                              attribute_to_layer_input, custom_attribution_func, output=output)
            items = [torch.as_tensor(a) for a in (got if isinstance(got, (list, tuple)) else [got])]
            sums = items if sums is None else [s + a for s, a in zip(sums, items)]
            deltas.append(delta)
            change.append(torch.as_tensor(self.inner.last_report["convergence_delta"]))
        delta = torch.stack(deltas, 1).reshape(-1)  # [N, B] -> example-major pairs
        self.last_report = {**self.inner.last_report, "method": "LayerDeepLiftShap", "layer": self.layer,
                            "convergence_delta": delta.tolist(),
                            "max_relative_delta": max(self.inner.last_report["max_relative_delta"], 0.0)}
        numpy = not isinstance(got if not isinstance(got, (list, tuple)) else got[0], Tensor)
        out = self._pack([s / len(rows) for s in sums], numpy)
        return (out, delta) if return_convergence_delta else out


class NeuronGradient(_NeuronMethod):
    """d neuron / d input."""

    method = Saliency

    def attribute(self, inputs: Any, neuron_selector: Any, additional_forward_args: Any = None,
                  attribute_to_neuron_input: bool = False):
        return self._attribute(inputs, neuron_selector, attribute_to_neuron_input, abs=False,
                               additional_forward_args=additional_forward_args)


class NeuronGradientShap(_NeuronMethod):
    """GradientShap of one hidden unit (Captum's argument order)."""

    method = GradientShap

    def attribute(self, inputs: Any, neuron_selector: Any, baselines: Any, n_samples: int = 5,
                  stdevs: Union[float, Sequence[float]] = 0.0, additional_forward_args: Any = None,
                  attribute_to_neuron_input: bool = False, *, return_convergence_delta: bool = False):
        return self._attribute(inputs, neuron_selector, attribute_to_neuron_input, baselines=baselines,
                               n_samples=n_samples, stdevs=stdevs, additional_forward_args=additional_forward_args,
                               return_convergence_delta=return_convergence_delta)


class NeuronDeepLiftShap(_NeuronMethod):
    """DeepLiftShap of one hidden unit (Captum's argument order)."""

    method = DeepLiftShap

    def attribute(self, inputs: Any, neuron_selector: Any, baselines: Any, additional_forward_args: Any = None,
                  attribute_to_neuron_input: bool = False, custom_attribution_func: Any = None, *,
                  return_convergence_delta: bool = False):
        return self._attribute(inputs, neuron_selector, attribute_to_neuron_input, baselines=baselines,
                               additional_forward_args=additional_forward_args,
                               custom_attribution_func=custom_attribution_func,
                               return_convergence_delta=return_convergence_delta)


class NeuronConductance(AttributionMethod):
    """Conductance of one hidden unit (Dhamdhere et al.): for each input, ∫ d out[target] / d neuron
    · d neuron / d input along the path from the baselines, times (x - x0); Captum's definition
    and default rule (riemann_trapezoid). It needs both the neuron and the output's target."""

    _multiply_by_inputs = True  # Captum's default

    def __init__(self, model, layer: str, multiply_by_inputs: bool = True):
        super().__init__(model, multiply_by_inputs)
        self.layer = layer
        self.neuron_model = neuron_model(model, layer)

    def attribute(self, inputs: Any, neuron_selector: Any, baselines: Any = None, target: Any = None,
                  additional_forward_args: Any = None, n_steps: int = 50, method: str = "riemann_trapezoid",
                  internal_batch_size: Optional[int] = None, attribute_to_neuron_input: bool = False,
                  grad_kwargs: Optional[dict] = None, *, output: Union[str, int, None] = None):
        check_grad_kwargs(grad_kwargs)
        layer = self.layer if not attribute_to_neuron_input else neuron_input(self.model, self.layer)
        points, weights = integration_rule(method, n_steps)
        prepared, n = self._prepare(inputs, baselines, additional_forward_args)
        check_batched(self.model, prepared, n)
        index = self._output_index(output)
        axes = prepared.row_axes()
        through = self.active  # the model, or its embedding view for token ids
        cut = self.neuron_model if through is self.model and layer == self.layer else neuron_model(through, layer)
        layer_axis = probe(cut, prepared.tensors, prepared.axes or [0] * len(prepared.tensors)).outputs[0]
        runs = path_runs(prepared.tensors, prepared.baselines, prepared.attributed, axes, n, points)
        steps = len(points) // len(runs)  # steps per run: all stacked, or one at a time
        neuron = make_targets(neuron_selector, n, layer_axis).repeat(steps)
        targets = self._targets(target, n, prepared, index).repeat(steps)
        parts = []
        for scaled in runs:
            input_grads, _ = self._gradients_on(cut, scaled, prepared.attributed, neuron, 0, internal_batch_size, axes)
            values = tensor_values(through, [layer], scaled)
            layer_grads, _ = self._gradients_on(tensors_as_inputs(through, [layer], values), [*values, *scaled],
                                                [True] + [False] * len(scaled), targets, index, internal_batch_size,
                                                [layer_axis, *axes])
            at_neuron = neuron.select(layer_grads[0]).double()  # d out / d neuron, one per row
            grads = [None if g is None else rows_first(g, x).double() for g, x in zip(input_grads, axes)]
            parts.append([None if g is None else g * at_neuron.reshape(-1, *[1] * (g.dim() - 1)) for g in grads])
        out = []
        for i, (t, b, x) in enumerate(zip(prepared.tensors, prepared.baselines, axes)):
            if parts[0][i] is None:
                out.append(None)
                continue
            weighted = torch.cat([p[i] for p in parts])  # [K·N, ...] step-major, examples on axis 0
            total = rows_back(sum(float(w) * weighted[s * n:(s + 1) * n] for s, w in enumerate(weights)), x).to(t.dtype)
            out.append(total * (t - b) if self._multiply_by_inputs else total)
        self._report({**output_report(self.model, "NeuronConductance", index), "layer": self.layer,
                      "n_steps": n_steps, "rule": method})
        return prepared.repack(out)
