"""Layer and neuron attribution at any ONNX tensor, by its ONNX name.

Both are the plain methods on a re-cut model (`onnx_attr.layers`): a neuron method attributes a
target of the model cut after the tensor; a layer method attributes the tensor fed in as an
input, the original inputs still feeding the paths that bypass it. LayerDeepLift (in
`deeplift.py`) taps the tensor in place instead, so the reference pass stays the baselines'.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from torch import Tensor

from ..errors import InputError
from ..layers import tensor_as_output, tensor_values, tensors_as_inputs
from ._inputs import prepare
from .base import AttributionMethod
from .deeplift import DeepLift
from .gradient import IntegratedGradients


def refuse_layer_input(asked: bool, name: str) -> None:
    """Captum's `attribute_to_layer_input`: a layer here is an ONNX tensor, so its input is
    another tensor, to be named itself. False (Captum's default) is accepted as is."""
    if asked:
        raise InputError(f"{name}=True: layers are ONNX tensors here, so name the tensor that feeds the layer "
                         "(`onnx-attr inspect --json` lists them) and keep this False")


class LayerMethod(AttributionMethod):
    """A method at hidden tensor(s) `layer`, by ONNX name (a list or tuple for several, as Captum's
    list of layers): the tensors are read in a forward pass, and fed into the model re-cut at them
    (`tensors_as_inputs`), the original inputs still feeding the paths that bypass them."""

    def __init__(self, model, layer: Union[str, Sequence[str]], **options: Any):
        super().__init__(model, **options)
        self.layer = layer
        names = [layer] if isinstance(layer, str) else list(layer) if isinstance(layer, (list, tuple)) else []
        if not names or not all(isinstance(n, str) for n in names):
            raise InputError(f"layer {layer!r}: give an ONNX tensor name, or a list of them "
                             "(`onnx-attr inspect --json` lists them)")
        self.layers = names

    def _at_layers(self, inputs: Any, baselines: Any, additional_forward_args: Any,
                   attribute_to_layer_input: bool = False):
        """The prepared call, the layers' values for the inputs and the baselines, and the model
        cut at the layers (the layers first, then the model's inputs)."""
        refuse_layer_input(attribute_to_layer_input, "attribute_to_layer_input")
        every = {s.name for s in self.model.inputs}  # inputs are fed, not attributed: integers allowed
        prepared = prepare(self.model, inputs, baselines, additional_forward_args, embedded=every)
        h = tensor_values(self.model, self.layers, prepared.tensors)
        h0 = tensor_values(self.model, self.layers, prepared.baselines)
        return prepared, h, h0, tensors_as_inputs(self.model, self.layers, h)

    def _layer_gradients(self, cut, h: Sequence[Tensor], tensors: Sequence[Tensor], targets, index: int,
                         internal_batch_size: Optional[int] = None) -> tuple[list[Tensor], Tensor]:
        """d out[target] / d layer at layer values h (the inputs `tensors` feeding the bypasses)."""
        self.active = cut
        attributed = [True] * len(h) + [False] * len(tensors)
        grads, value = self._gradients([*h, *tensors], attributed, targets, index, internal_batch_size)
        self.active = self.model
        return grads[:len(h)], value

    def _pack(self, per_layer: Sequence[Tensor], as_numpy: bool) -> Any:
        """One result per layer, in the container the layer was named in; numpy in, numpy out."""
        items = [a.detach().cpu().numpy() if as_numpy else a for a in per_layer]
        if isinstance(self.layer, str):
            return items[0]
        return list(items) if isinstance(self.layer, list) else tuple(items)


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

    def __init__(self, model, layer: Union[str, Sequence[str]], multiply_by_inputs: bool = True):
        super().__init__(model, layer)
        self._multiply_by_inputs = multiply_by_inputs

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  n_steps: int = 50, method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  return_convergence_delta: bool = False, attribute_to_layer_input: bool = False, *,
                  output: Union[str, int, None] = None):
        prepared, h, h0, cut = self._at_layers(inputs, baselines, additional_forward_args, attribute_to_layer_input)
        ig = IntegratedGradients(cut, multiply_by_inputs=self._multiply_by_inputs)
        attributions, delta = ig.attribute(tuple(h), tuple(h0), target, tuple(prepared.tensors), n_steps=n_steps,
                                           method=method, internal_batch_size=internal_batch_size,
                                           return_convergence_delta=True, output=output)
        self.last_report = {**ig.last_report, "method": "LayerIntegratedGradients", "layer": self.layer}
        out = self._pack(attributions, prepared.as_numpy)
        return (out, delta) if return_convergence_delta else out


class _NeuronMethod(AttributionMethod):
    """A method attributing element `neuron_selector` (an int or a tuple, batch axis excluded, with
    slices or a callable as Captum allows) of hidden tensor `layer` to the inputs: the method
    itself on the model cut after the tensor, the selector its target. Each subclass passes on
    exactly the arguments its method takes."""

    method: type

    def __init__(self, model, layer: str, **options: Any):
        super().__init__(model)
        self.layer = layer
        self.inner = self.method(tensor_as_output(model, layer), **options)

    @property
    def multiplies_by_inputs(self) -> bool:
        return getattr(self.inner, "multiplies_by_inputs", False)

    def _attribute(self, inputs: Any, neuron_selector: Any, attribute_to_neuron_input: bool, **arguments: Any):
        refuse_layer_input(attribute_to_neuron_input, "attribute_to_neuron_input")
        result = self.inner.attribute(inputs, target=neuron_selector, **arguments)
        self.last_report = {**self.inner.last_report, "method": type(self).__name__, "layer": self.layer}
        return result


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
