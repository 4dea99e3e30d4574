"""Layer and neuron attribution at any ONNX tensor, by its ONNX name.

Both are the plain methods on a re-cut model (`onnx_attr.layers`): a neuron method attributes a
target of the model cut after the tensor; a layer method attributes the tensor fed in as an
input, the original inputs still feeding the paths that bypass it. LayerDeepLift (in
`deeplift.py`) taps the tensor in place instead, so the reference pass stays the baselines'.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from ..errors import InputError
from ..layers import tensor_as_output, tensor_values, tensors_as_inputs
from ._inputs import prepare
from .deeplift import DeepLift
from .gradient import IntegratedGradients


def refuse_layer_input(asked: bool, name: str) -> None:
    """Captum's `attribute_to_layer_input`: a layer here is an ONNX tensor, so its input is
    another tensor, to be named itself. False (Captum's default) is accepted as is."""
    if asked:
        raise InputError(f"{name}=True: layers are ONNX tensors here, so name the tensor that feeds the layer "
                         "(`onnx-attr inspect --json` lists them) and keep this False")


class LayerIntegratedGradients:
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
        self.model, self.layer = model, layer
        self._multiply_by_inputs = multiply_by_inputs
        self.last_report: dict = {}

    def attribute(self, inputs: Any, baselines: Any = None, target: Any = None, additional_forward_args: Any = None,
                  n_steps: int = 50, method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                  return_convergence_delta: bool = False, attribute_to_layer_input: bool = False, *,
                  output: Union[str, int, None] = None):
        refuse_layer_input(attribute_to_layer_input, "attribute_to_layer_input")
        names = [self.layer] if isinstance(self.layer, str) else list(self.layer)
        if not names or not all(isinstance(n, str) for n in names):
            raise InputError(f"layer {self.layer!r}: give an ONNX tensor name, or a list of them "
                             "(`onnx-attr inspect --json` lists them)")
        every = {s.name for s in self.model.inputs}  # inputs are fed, not attributed: integers allowed
        prepared = prepare(self.model, inputs, baselines, additional_forward_args, embedded=every)
        h = tensor_values(self.model, names, prepared.tensors)
        h0 = tensor_values(self.model, names, prepared.baselines)
        cut = tensors_as_inputs(self.model, names, h)
        ig = IntegratedGradients(cut, multiply_by_inputs=self._multiply_by_inputs)
        attributions, delta = ig.attribute(tuple(h), tuple(h0), target, tuple(prepared.tensors), n_steps=n_steps,
                                           method=method, internal_batch_size=internal_batch_size,
                                           return_convergence_delta=True, output=output)
        self.last_report = {**ig.last_report, "method": "LayerIntegratedGradients", "layer": self.layer}
        if prepared.as_numpy:
            attributions = tuple(a.detach().cpu().numpy() for a in attributions)
        if isinstance(self.layer, str):
            attributions = attributions[0]
        elif isinstance(self.layer, list):
            attributions = list(attributions)
        return (attributions, delta) if return_convergence_delta else attributions


class _NeuronMethod:
    """A method attributing element `neuron_selector` (an int or a tuple, batch axis excluded) of
    hidden tensor `layer` to the inputs: the method itself on the model cut after the tensor."""

    method: type

    def __init__(self, model, layer: str, **options: Any):
        self.model, self.layer = model, layer
        self.inner = self.method(tensor_as_output(model, layer), **options)

    @property
    def last_report(self) -> dict:
        return {**self.inner.last_report, "method": type(self).__name__, "layer": self.layer}

    @property
    def multiplies_by_inputs(self) -> bool:
        return getattr(self.inner, "multiplies_by_inputs", False)

    def _attribute(self, inputs: Any, neuron_selector: Any, baselines: Any, additional_forward_args: Any,
                   attribute_to_neuron_input: bool, **options: Any):
        refuse_layer_input(attribute_to_neuron_input, "attribute_to_neuron_input")
        return self.inner.attribute(inputs, baselines=baselines, target=neuron_selector,
                                    additional_forward_args=additional_forward_args, **options)


class NeuronDeepLift(_NeuronMethod):
    """DeepLift of one hidden unit: Σ attributions = h_n(x) - h_n(x0), exactly."""

    method = DeepLift

    def attribute(self, inputs: Any, neuron_selector: Any, baselines: Any = None, additional_forward_args: Any = None,
                  attribute_to_neuron_input: bool = False, custom_attribution_func: Any = None, *,
                  return_convergence_delta: bool = False, **options: Any):
        """Captum's argument order; the delta (keyword only) is ours."""
        return self._attribute(inputs, neuron_selector, baselines, additional_forward_args, attribute_to_neuron_input,
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
        return self._attribute(inputs, neuron_selector, baselines, additional_forward_args, attribute_to_neuron_input,
                               n_steps=n_steps, method=method, internal_batch_size=internal_batch_size,
                               return_convergence_delta=return_convergence_delta, **options)
