"""The toy models of Captum's own tests (captum/testing/helpers/basic_models.py), re-created with
the same architectures and weights, and exported to ONNX, so the values Captum's tests state can
be asserted against onnx-attr (tests/test_captum_expectations.py).

Captum calls some of them with plain Python values (`additional_forward_args=(1,)`); here those
become model inputs (a 0-d int64 `scale`), so the call form stays Captum's.
"""

from __future__ import annotations

import functools
import io
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import onnx_attr


class BasicModel(nn.Module):
    """1 - relu(1 - x)."""

    def forward(self, x: Tensor) -> Tensor:
        return 1 - F.relu(1 - x)


class BasicModel2(nn.Module):
    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return F.relu(F.relu(x1) - 1 - F.relu(x2))


class BasicModel3(nn.Module):
    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return F.relu(F.relu(x1 - 1) - F.relu(x2))


class BasicModel4MultiArgs(nn.Module):
    """BasicModel3 with input 2 divided by a third input, and one output column picked (fixed to 0)."""

    def forward(self, x1: Tensor, x2: Tensor, divisor: Tensor) -> Tensor:
        return F.relu(F.relu(x1 - 1) - F.relu(x2).div(divisor))[:, 0]


class BasicModelBoolInput(nn.Module):
    """BasicModel_MultiLayer on a bool input scaled by 10."""

    def __init__(self):
        super().__init__()
        self.model = BasicModelMultiLayer()

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.float() * 10.0)


class ReLUDeepLiftModel(nn.Module):
    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return 2 * F.relu(x1) + 2 * F.relu(x2 - 1.5)


class TanhDeepLiftModel(nn.Module):
    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return 2 * torch.tanh(x1) + 2 * torch.tanh(x2 - 1.5)


class ReLULinearModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(3, 1, bias=False), nn.Linear(3, 1, bias=False), nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.l1.weight.copy_(torch.tensor([[3.0, 1.0, 0.0]]))
            self.l2.weight.copy_(torch.tensor([[2.0, 3.0, 0.0]]))
            self.l3.weight.copy_(torch.tensor([[1.0, 1.0]]))

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.l3(F.relu(torch.cat([self.l1(x1), self.l2(x2)], dim=1)))


class LinearMaxPoolLinearModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(4, 4, bias=False), nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.lin1.weight.copy_(torch.eye(4))
            self.lin2.weight.copy_(torch.ones(1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.max_pool1d(self.lin1(x.unsqueeze(1)), 4)[:, 0, :])


class BasicModelMultiLayer(nn.Module):
    """Linear(eye) -> Linear(ones, bias [-10, 1, 1, 1]) -> ReLU -> Linear(ones, bias [-1, 1])."""

    def __init__(self):
        super().__init__()
        self.linear0, self.linear1, self.linear2 = nn.Linear(3, 3), nn.Linear(3, 4), nn.Linear(4, 2)
        with torch.no_grad():
            self.linear0.weight.copy_(torch.eye(3))
            self.linear0.bias.zero_()
            self.linear1.weight.fill_(1.0)
            self.linear1.bias.copy_(torch.tensor([-10.0, 1.0, 1.0, 1.0]))
            self.linear2.weight.fill_(1.0)
            self.linear2.bias.copy_(torch.tensor([-1.0, 1.0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(F.relu(self.linear1(self.linear0(x))))


class BasicModelMultiLayerAddInput(BasicModelMultiLayer):
    def forward(self, x: Tensor, add_input: Tensor) -> Tensor:
        return super().forward(x + add_input)


class BasicModelMultiLayerMultiInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = BasicModelMultiLayer()

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor, scale: Tensor) -> Tensor:
        return self.model(scale * (x1 + x2 + x3))


class BasicModelConvNetOneConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.fc1 = nn.Conv2d(1, 2, 3, 1), nn.Linear(8, 4)
        with torch.no_grad():
            self.conv1.weight.fill_(1.0)
            self.conv1.bias.copy_(torch.tensor([-50.0, -75.0]))
            self.fc1.weight.copy_(torch.cat([torch.ones(4, 5), -torch.ones(4, 3)], dim=1))
            self.fc1.bias.zero_()

    def forward(self, x: Tensor, x2: Tensor) -> Tensor:
        return F.relu(self.fc1(F.relu(self.conv1(x + x2)).reshape(-1, 8)))


class BasicModelConvNetOneConvSingle(BasicModelConvNetOneConv):
    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return F.relu(self.fc1(F.relu(self.conv1(x)).reshape(-1, 8)))


@functools.lru_cache(maxsize=None)
def load(name: str):
    """Model `name` of this module, exported (dynamic batch on every input with a batch) and loaded
    (the final ReLU some of them end in is kept: Captum explains it)."""
    module, examples, names = _BUILDERS[name]()
    return onnx_attr.load(export(module, examples, names), strip_final_activation=False)


def export(module: nn.Module, examples: Sequence[Tensor], names: Sequence[str]) -> bytes:
    batch = torch.export.Dim("batch")
    shapes = tuple({0: batch} if t.dim() else None for t in examples)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), tuple(examples), input_names=list(names), dynamic_shapes=shapes,
                                    opset_version=18, dynamo=True, verbose=False)
    program.save(buffer)
    return buffer.getvalue()


def _rows(*shape: int) -> Tensor:
    return torch.rand(2, *shape)


_BUILDERS = {
    "BasicModel": lambda: (BasicModel(), [_rows(3)], ["x"]),
    "BasicModel_1d": lambda: (BasicModel(), [torch.rand(6)], ["x"]),
    "BasicModel_int": lambda: (BasicModel(), [torch.randint(0, 3, (2, 3))], ["x"]),
    "BasicModel3_int": lambda: (BasicModel3(), [torch.randint(0, 3, (2, 1)), torch.randint(0, 3, (2, 1))],
                                ["x1", "x2"]),
    "BasicModel2": lambda: (BasicModel2(), [_rows(1), _rows(1)], ["x1", "x2"]),
    "BasicModel2_0d": lambda: (BasicModel2(), [torch.rand(2), torch.rand(2)], ["x1", "x2"]),
    "BasicModel3": lambda: (BasicModel3(), [_rows(1), _rows(1)], ["x1", "x2"]),
    "BasicModel3_0d": lambda: (BasicModel3(), [torch.rand(2), torch.rand(2)], ["x1", "x2"]),
    "BasicModel4": lambda: (BasicModel4MultiArgs(), [_rows(3), _rows(3), _rows(3)], ["x1", "x2", "divisor"]),
    "BasicModelBoolInput": lambda: (BasicModelBoolInput(), [_rows(3) > 0.5], ["x"]),
    "ReLUDeepLift": lambda: (ReLUDeepLiftModel(), [torch.rand(2), torch.rand(2)], ["x1", "x2"]),
    "ReLUDeepLift_2d": lambda: (ReLUDeepLiftModel(), [_rows(1), _rows(1)], ["x1", "x2"]),
    "ReLUDeepLift_4d": lambda: (ReLUDeepLiftModel(), [_rows(1, 1, 1), _rows(1, 1, 1)], ["x1", "x2"]),
    "TanhDeepLift": lambda: (TanhDeepLiftModel(), [torch.rand(2), torch.rand(2)], ["x1", "x2"]),
    "ReLULinear": lambda: (ReLULinearModel(), [_rows(3), _rows(3)], ["x1", "x2"]),
    "LinearMaxPoolLinear": lambda: (LinearMaxPoolLinearModel(), [_rows(4)], ["x"]),
    "MultiLayer": lambda: (BasicModelMultiLayer(), [_rows(3)], ["x"]),
    "MultiLayerAddInput": lambda: (BasicModelMultiLayerAddInput(), [_rows(3), _rows(3)], ["x", "add_input"]),
    "MultiLayerMultiInput": lambda: (BasicModelMultiLayerMultiInput(), [_rows(3), _rows(3), _rows(3),
                                                                        torch.tensor(1)],
                                     ["x1", "x2", "x3", "scale"]),
    "ConvNetOneConv": lambda: (BasicModelConvNetOneConv(), [torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)],
                               ["x", "x2"]),
    "ConvNetOneConvDiffShapes": lambda: (BasicModelConvNetOneConv(), [torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 1)],
                                         ["x", "x2"]),
    "ConvNetOneConvSingle": lambda: (BasicModelConvNetOneConvSingle(), [torch.rand(2, 1, 4, 4)], ["x"]),
}
