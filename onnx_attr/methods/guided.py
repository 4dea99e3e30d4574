"""Guided backpropagation, deconvolution and guided GradCAM, on the imported graph.

Each Relu node of the graph runs a module whose forward is ReLU's, bit for bit, and whose
backward passes on only positive gradients: guided backpropagation keeps ReLU's own gradient
where the input was positive (relu(grad · [x > 0])), deconvolution ignores the input
(relu(grad)). Captum overrides the backward of `nn.ReLU` modules only, so LeakyRelu, Clip and
other activations keep their plain gradients here too. The substitution is a sibling graph
(`layers.replace_modules`), never a patch of torch.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onnx_attr.deeplift.layers import replace_modules
from onnx_attr.errors import InputError
from onnx_attr.importing.rows import rows_back, rows_first
from onnx_attr.methods._inputs import _as_list
from onnx_attr.methods.base import AttributionMethod
from onnx_attr.methods.layer import LayerGradCam, _NeuronMethod


class _PositiveGradient(torch.autograd.Function):
    """ReLU forward; backward passes on positive gradients only (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, deconvolution: bool) -> Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)
        ctx.deconvolution = deconvolution
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        (out,) = ctx.saved_tensors
        through = grad if ctx.deconvolution else grad * (out > 0).to(grad.dtype)
        return F.relu(through), None


class PositiveGradientRelu(nn.Module):
    def __init__(self, deconvolution: bool):
        super().__init__()
        self.deconvolution = deconvolution

    def forward(self, x: Tensor) -> Tensor:
        return _PositiveGradient.apply(x, self.deconvolution)


def positive_gradient_model(model, deconvolution: bool):
    """The model with every Relu node's gradient overridden (guided, or deconvolution)."""
    kind = "Deconvolution" if deconvolution else "GuidedBackprop"

    def swap(node, module):
        if node.meta.get("onnx_op") == "Relu":
            return PositiveGradientRelu(deconvolution), {"gradient_rule": kind}
        return None

    module, nodes = replace_modules(model, swap, "positive_gradient_relu")
    return model.with_module(module, notes=[f"{kind}: {len(nodes)} Relu node(s) pass on positive gradients only"])


class GuidedBackprop(AttributionMethod):
    """d out / d x with each Relu's gradient replaced by relu(grad · [x > 0]) (Springenberg et al.)."""

    deconvolution = False

    def __init__(self, model):
        swapped = positive_gradient_model(model, self.deconvolution)
        if "batch_parent" in model.__dict__:  # a neuron's cut model keeps the full model's examples
            swapped.__dict__["batch_parent"] = model.__dict__["batch_parent"]
        super().__init__(swapped)

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None, *,
                  output: Union[str, int, None] = None):
        prepared, grads = self._input_gradients(inputs, target, additional_forward_args, output)
        return prepared.repack(grads)


class Deconvolution(GuidedBackprop):
    """d out / d x with each Relu's gradient replaced by relu(grad) (Zeiler and Fergus)."""

    deconvolution = True


class GuidedGradCam(AttributionMethod):
    """Guided backpropagation times GradCAM at `layer` (its ReLU'd map upsampled to each input's
    spatial size, Captum's `interpolate_mode`); an input the map cannot be upsampled to (no spatial
    axes, or a rank other than the layer's) gets an empty tensor with a warning, as in Captum."""

    def __init__(self, model, layer: str, device_ids: Any = None):
        super().__init__(model)  # device_ids: Captum's DataParallel option, nothing to do here
        if not isinstance(layer, str):
            raise InputError(f"GuidedGradCam takes one layer, a tensor name; got {layer!r}")
        self.layer = layer
        self.grad_cam = LayerGradCam(model, layer)
        self.guided = GuidedBackprop(model)

    def attribute(self, inputs: Any, target: Any = None, additional_forward_args: Any = None,
                  interpolate_mode: str = "nearest", attribute_to_layer_input: bool = False, *,
                  output: Union[str, int, None] = None):
        cam = self.grad_cam.attribute(inputs, target, additional_forward_args,
                                      attribute_to_layer_input=attribute_to_layer_input, relu_attributions=True,
                                      output=output)
        if isinstance(cam, tuple):
            raise InputError(f"attribute_to_layer_input=True: the node computing {self.layer!r} reads "
                             f"{list(self.grad_cam.layers)}; GuidedGradCam takes one map, so name one of them as the "
                             "layer")
        guided = self.guided.attribute(inputs, target, additional_forward_args, output=output)
        # spatial axes are those after the batch axis: the map and each input are upsampled and
        # multiplied with their examples on axis 0, and moved back
        cam = rows_first(torch.as_tensor(cam), self.grad_cam.layer_axes[0])
        items, pack = _as_list(guided)
        axes = self.guided.last_report.get("batch_axes", {})
        names = list(inputs) if isinstance(inputs, dict) else [s.name for s in self.model.inputs][:len(items)]
        out = [_times_map(g, cam, interpolate_mode, axes.get(name, 0)) for g, name in zip(items, names)]
        self.last_report = {**self.guided.last_report, "method": "GuidedGradCam", "layer": self.layer}
        return pack(out)


def _times_map(g: Any, cam: Tensor, mode: str, axis: Optional[int] = 0) -> Any:
    """g · cam (examples on axis 0) upsampled to g's spatial axes, g's examples on `axis`; empty
    where that cannot be (Captum's convention)."""
    numpy = not isinstance(g, Tensor)
    x = rows_first(torch.as_tensor(g), axis)
    if x.dim() != cam.dim() or x.dim() < 3:
        warnings.warn("GuidedGradCam: the GradCAM map cannot be upsampled to an input of shape "
                      f"{list(x.shape)} (the layer's map has shape {list(cam.shape)}): its attributions are empty",
                      stacklevel=3)
        empty = torch.empty(0)
        return empty.numpy() if numpy else empty
    result = rows_back(x * F.interpolate(cam.to(x.device, x.dtype), size=tuple(x.shape[2:]), mode=mode), axis)
    return result.numpy() if numpy else result


class NeuronGuidedBackprop(_NeuronMethod):
    """Guided backpropagation of one hidden unit to the inputs."""

    method = GuidedBackprop

    def attribute(self, inputs: Any, neuron_selector: Any, additional_forward_args: Any = None,
                  attribute_to_neuron_input: bool = False):
        return self._attribute(inputs, neuron_selector, attribute_to_neuron_input,
                               additional_forward_args=additional_forward_args)


class NeuronDeconvolution(NeuronGuidedBackprop):
    """Deconvolution of one hidden unit to the inputs."""

    method = Deconvolution
