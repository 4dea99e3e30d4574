"""Layer and neuron forms of the perturbation methods, at ONNX tensors named like every layer here.

A layer form perturbs hidden tensor `layer` itself: the model re-cut with the tensor fed from
outside (`tensors_as_inputs`), its values for the inputs as the attributed input, the original
inputs still feeding the paths that bypass it. A neuron form attributes one element of the tensor
to the inputs: the method on the model cut after it (`tensor_as_output`). Both run on the
imported module (the cut graphs have no ONNX file for onnxruntime to run).
"""

from __future__ import annotations

from typing import Any, Sequence, Union

from onnx_attr.deeplift.layers import cut_groups, tensor_values, tensors_as_inputs
from onnx_attr.methods._inputs import prepare
from onnx_attr.methods.layer import LayerMethod, _NeuronMethod
from onnx_attr.methods.masked_eval import DEFAULT_BUDGET_BYTES
from onnx_attr.methods.perturbation import FeatureAblation, FeaturePermutation


class _LayerPerturbation(LayerMethod):
    """`method` run on hidden tensor(s) `layer` (a name, or a list/tuple of names: the result comes
    back in a container of the same kind), as Captum's layer methods do on a module's output. A
    LayerMethod, so the jobs and the CLI drive it as every other layer method."""

    method: type
    _multiply_by_inputs = True  # Captum's flag, as the plain perturbation methods'

    def __init__(self, model, layer: Union[str, Sequence[str]], budget_bytes: int = DEFAULT_BUDGET_BYTES):
        super().__init__(model, layer)
        self.budget_bytes = budget_bytes

    def _on_layer(self, inputs: Any, additional_forward_args: Any, **options: Any):  # after _select_layers
        every = {s.name for s in self.model.inputs}  # inputs are fed, not attributed: integers allowed
        prepared = prepare(self.model, inputs, None, additional_forward_args, embedded=every)
        h = tensor_values(self.model, self.layers, prepared.tensors)
        attributions: list = [None] * len(h)
        for group in cut_groups(self.model, self.layers):  # a layer computed from another is perturbed alone
            at = tuple(h[i] for i in group)
            inner = self.method(tensors_as_inputs(self.model, [self.layers[i] for i in group], at),
                                budget_bytes=self.budget_bytes)
            found = inner.attribute(at, additional_forward_args=tuple(prepared.tensors),
                                    **{k: _group_of(v, group, k) for k, v in options.items()})
            for i, a in zip(group, found):
                attributions[i] = a
        self.last_report = {"method": type(self).__name__, "layer": self.layer}
        return self._pack(attributions, prepared.as_numpy)


class LayerFeatureAblation(_LayerPerturbation):
    """FeatureAblation of a hidden tensor: each of its elements (or each group of `layer_mask`) set
    to `layer_baselines` (0 by default) in turn, credited with the output drop."""

    method = FeatureAblation

    def attribute(self, inputs: Any, layer_baselines: Any = None, target: Any = None,
                  additional_forward_args: Any = None, layer_mask: Any = None, attribute_to_layer_input: bool = False,
                  perturbations_per_eval: int = 1, show_progress: bool = False, *,
                  output: Union[str, int, None] = None):
        self._select_layers(attribute_to_layer_input)
        return self._on_layer(inputs, additional_forward_args, baselines=_per_layer(layer_baselines, self.layers),
                              target=target, feature_mask=_per_layer(layer_mask, self.layers),
                              perturbations_per_eval=perturbations_per_eval, show_progress=show_progress,
                              output=output)


class LayerFeaturePermutation(_LayerPerturbation):
    """FeaturePermutation of a hidden tensor: its features shuffled across the batch."""

    method = FeaturePermutation

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None, layer_mask: Any = None,
                  perturbations_per_eval: int = 1, show_progress: bool = False, *,
                  output: Union[str, int, None] = None):
        return self._on_layer(inputs, additional_forward_args, target=target,
                              feature_mask=_per_layer(layer_mask, self.layers),
                              perturbations_per_eval=perturbations_per_eval, show_progress=show_progress,
                              output=output)


def _group_of(value: Any, group: Sequence[int], name: str) -> Any:
    """A per-layer option (baselines, masks: one entry per layer, as a tuple) for the layers in
    `group`; other options as they are."""
    if name not in ("baselines", "feature_mask") or not isinstance(value, tuple):
        return value
    return tuple(value[i] for i in group)


def _per_layer(value: Any, layers: Sequence[str]) -> Any:
    """A single layer's value as the one-input tuple the inner method takes; for several (a list of
    layers, or a layer's inputs), one per layer as given, checked."""
    if value is None:
        return None
    if len(layers) == 1:
        return (value,)
    if not isinstance(value, (list, tuple)):
        return value  # a number for every layer
    if len(value) != len(layers):
        from onnx_attr.errors import InputError

        raise InputError(f"{len(layers)} layers ({layers}): give one baseline or mask per layer, as a tuple")
    return tuple(value)


class NeuronFeatureAblation(_NeuronMethod):
    """FeatureAblation of one element (`neuron_selector`, batch axis excluded; a tuple with
    slices or a callable sums a region) of hidden tensor `layer`."""

    method = FeatureAblation

    def __init__(self, model, layer: str, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        super().__init__(model, layer, budget_bytes=budget_bytes)

    def attribute(self, inputs: Any, neuron_selector: Any, baselines: Any = None, additional_forward_args: Any = None,
                  feature_mask: Any = None, attribute_to_neuron_input: bool = False, perturbations_per_eval: int = 1,
                  show_progress: bool = False):
        return self._attribute(inputs, neuron_selector, attribute_to_neuron_input, baselines=baselines,
                               additional_forward_args=additional_forward_args, feature_mask=feature_mask,
                               perturbations_per_eval=perturbations_per_eval, show_progress=show_progress)
