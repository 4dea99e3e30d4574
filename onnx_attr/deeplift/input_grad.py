"""Convolutions that keep, for DeepLift's backward, only what the input's gradient reads.

autograd's convolution keeps its input for its weights' gradient. Attribution never asks for one:
the engine differentiates the attributed inputs alone (`torch.autograd.grad`), and the gradient of
a linear map with respect to its input does not read that input. On layout_cdla those inputs are
157 MB of the 450 MB the main pass holds for its backward: memory that a first call faults in page
by page (issue 18 §7). So in DeepLift's main pass each convolution with constant weights keeps, in
place of the input it saves, its shape; the backward gets an empty tensor of that shape, as
torch's own `torch.nn.grad.conv2d_input` gives `convolution_backward`. The forward is the
module's own call, untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from onnx_attr.deeplift.ops import DeepLiftState


class _Shape:
    """What is kept of a saved tensor whose values the backward does not read."""

    __slots__ = ("shape", "dtype", "device")

    def __init__(self, t: Tensor):
        self.shape, self.dtype, self.device = t.shape, t.dtype, t.device

    def tensor(self) -> Tensor:
        return torch.empty(1, dtype=self.dtype, device=self.device).expand(self.shape)


def _unpack(saved):
    return saved.tensor() if isinstance(saved, _Shape) else saved


class InputGradConv(nn.Module):
    """A constant-weight convolution whose saved input is only its shape in DeepLift's main pass."""

    def __init__(self, original: nn.Module, state: DeepLiftState):
        super().__init__()
        self.original, self._state = original, state

    def forward(self, *args, **kwargs):
        if self._state.mode != "deeplift" or not torch.is_grad_enabled():
            return self.original(*args, **kwargs)
        kept = {p.untyped_storage().data_ptr() for p in self.original.parameters()}

        def pack(t: Tensor):  # the weights (and views of them) stay: the input's gradient reads them
            return t if t.untyped_storage().data_ptr() in kept else _Shape(t)

        with torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
            return self.original(*args, **kwargs)


def lean_convolutions(module: fx.GraphModule, variable: set[fx.Node], state: DeepLiftState) -> int:
    """Wrap each convolution (torch's ConvNd and the converters' subclasses; not transposed) that
    a varying value enters; how many."""
    count = 0
    for node in list(module.graph.nodes):
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node) \
                or node.args[0] not in variable:
            continue
        original = module.get_submodule(node.target)
        if not isinstance(original, nn.modules.conv._ConvNd) or original.transposed:
            continue
        name = f"input_grad_{count}"
        module.add_submodule(name, InputGradConv(original, state))
        node.target = name
        count += 1
    return count
