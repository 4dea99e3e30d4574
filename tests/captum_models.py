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


class BasicModelMultiLayerMultiRelu(BasicModelMultiLayer):
    """BasicModel_MultiLayer(multi_input_module=True): two ReLUs (Captum's MultiRelu), one on
    linear1's output and one on linear1_alt's (same weights) of the input, summed."""

    def __init__(self):
        super().__init__()
        self.linear1_alt = nn.Linear(3, 4)
        with torch.no_grad():
            self.linear1_alt.weight.fill_(1.0)
            self.linear1_alt.bias.copy_(torch.tensor([-10.0, 1.0, 1.0, 1.0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(F.relu(self.linear1(self.linear0(x))) + F.relu(self.linear1_alt(x)))


class BasicLinearModel(nn.Module):
    """Linear(7, 1) over the two inputs concatenated (random weights, seeded)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(7, 1)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.linear(torch.cat((x1, x2), dim=-1))


class SoftmaxModel(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear-Softmax; `ones` sets every weight to 1 (Captum's
    SoftmaxDeepLiftModel), else they stay random (SoftmaxModel); biases are random (seeded)."""

    def __init__(self, num_in: int, num_hidden: int, num_out: int, ones: bool):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(num_in, num_hidden), nn.Linear(num_hidden, num_hidden)
        self.lin3 = nn.Linear(num_hidden, num_out)
        if ones:
            with torch.no_grad():
                for layer in (self.lin1, self.lin2, self.lin3):
                    layer.weight.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.lin3(F.relu(self.lin2(F.relu(self.lin1(x))))), dim=1)


class SigmoidDeepLiftModel(nn.Module):
    """Linear(ones, no bias) - ReLU - Linear(ones, no bias) - Sigmoid."""

    def __init__(self, num_in: int, num_hidden: int, num_out: int):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(num_in, num_hidden, bias=False), nn.Linear(num_hidden, num_out, bias=False)
        with torch.no_grad():
            self.lin1.weight.fill_(1.0)
            self.lin2.weight.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.lin2(F.relu(self.lin1(x))))


class SigmoidModel(nn.Module):
    """Linear - ReLU - Linear - Sigmoid, random weights and biases (seeded)."""

    def __init__(self, num_in: int, num_hidden: int, num_out: int):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(num_in, num_hidden), nn.Linear(num_hidden, num_out)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.lin2(F.relu(self.lin1(x))))


class BasicModel5MultiArgs(nn.Module):
    """relu(relu(x1 - 1)·w1 - relu(x2)·w2)[:, column]. Captum passes (w1, w2) as a Python list and
    the column as an int; here they are three 0-d inputs, passed as additional_forward_args=(w1, w2, column)."""

    def forward(self, x1: Tensor, x2: Tensor, w1: Tensor, w2: Tensor, column: Tensor) -> Tensor:
        out = F.relu(F.relu(x1 - 1) * w1 - F.relu(x2) * w2)
        return torch.index_select(out, 1, column.reshape(1)).squeeze(1)


class BasicModel6MultiTensor(nn.Module):
    """1 - relu(1 - (x1 + x2))[:, 1]."""

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return 1 - F.relu(1 - (x1 + x2))[:, 1]


class ReLULinearScaledModel(ReLULinearModel):
    """ReLULinearModel with l2's output scaled by a third input (Captum's x3, an int there)."""

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor) -> Tensor:  # type: ignore[override]
        return self.l3(F.relu(torch.cat([self.l1(x1), x3 * self.l2(x2)], dim=1)))


class MaxPoolReLU(nn.Module):
    """relu(maxpool1d(x, 3)).sum(dim=1)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(F.max_pool1d(x, 3)).sum(dim=1)


class ConvNetMaxPool(nn.Module):
    """Captum's BasicModel_ConvNet (2-d) and its MaxPool1d / MaxPool3d variants: conv-ReLU-pool
    twice, Linear(ones)-ReLU-Linear(ones), Softmax; conv weights and all biases random (seeded)."""

    def __init__(self, dims: int):
        super().__init__()
        conv, pool = {1: (nn.Conv1d, nn.MaxPool1d), 2: (nn.Conv2d, nn.MaxPool2d), 3: (nn.Conv3d, nn.MaxPool3d)}[dims]
        self.conv1, self.pool1, self.conv2, self.pool2 = conv(1, 2, 3), pool(2), conv(2, 4, 3), pool(2)
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 10)
        with torch.no_grad():
            self.fc1.weight.fill_(1.0)
            self.fc2.weight.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool2(F.relu(self.conv2(self.pool1(F.relu(self.conv1(x))))))
        return torch.softmax(self.fc2(F.relu(self.fc1(x.reshape(-1, 4)))), dim=1)


def _seeded(build):
    """Build under Captum's test seed (BaseTest.setUp: 1234), so random weights are repeatable."""
    torch.manual_seed(1234)
    return build()


def torch_module(name: str) -> nn.Module:
    """The PyTorch module behind model `name` (the same weights: random ones are seeded), for
    oracles computed by autograd on the original."""
    return _BUILDERS[name]()[0].eval()


@functools.lru_cache(maxsize=None)
def load(name: str):
    """Model `name` of this module, exported (dynamic batch on every input with a batch) and loaded
    (the final ReLU some of them end in is kept: Captum explains it)."""
    module, examples, names = _BUILDERS[name]()
    return onnx_attr.load(export(module, examples, names), strip_final_activation=False)


@functools.lru_cache(maxsize=None)
def load_as(name: str, dtype: torch.dtype):
    """Model `name` with its weights and example inputs cast to `dtype` (float64: the same model
    where float32 rounding would decide the answer), exported and loaded as `load` does."""
    module, examples, names = _BUILDERS[name]()
    examples = [t.to(dtype) if t.is_floating_point() else t for t in examples]
    return onnx_attr.load(export(module.to(dtype), examples, names), strip_final_activation=False)


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
    "MultiLayerMultiRelu": lambda: (BasicModelMultiLayerMultiRelu(), [_rows(3)], ["x"]),
    "BasicLinear": lambda: (_seeded(BasicLinearModel), [_rows(3), _rows(4)], ["x1", "x2"]),
    "Softmax_40_20_10": lambda: (_seeded(lambda: SoftmaxModel(40, 20, 10, ones=False)), [_rows(40)], ["x"]),
    "SoftmaxDeepLift_20": lambda: (_seeded(lambda: SoftmaxModel(20, 20, 10, ones=True)), [_rows(20)], ["x"]),
    "SoftmaxDeepLift_40": lambda: (_seeded(lambda: SoftmaxModel(40, 20, 10, ones=True)), [_rows(40)], ["x"]),
    "SigmoidDeepLift": lambda: (SigmoidDeepLiftModel(20, 5, 1), [_rows(20)], ["x"]),
    "ConvNet_MaxPool1d": lambda: (_seeded(lambda: ConvNetMaxPool(1)), [torch.rand(2, 1, 10)], ["x"]),
    "ConvNet_MaxPool2d": lambda: (_seeded(lambda: ConvNetMaxPool(2)), [torch.rand(2, 1, 10, 10)], ["x"]),
    "ConvNet_MaxPool3d": lambda: (_seeded(lambda: ConvNetMaxPool(3)), [torch.rand(2, 1, 10, 10, 10)], ["x"]),
    "Sigmoid_20_5_1": lambda: (_seeded(lambda: SigmoidModel(20, 5, 1)), [_rows(20)], ["x"]),
    "BasicModel5": lambda: (BasicModel5MultiArgs(), [_rows(3), _rows(3), torch.tensor(2), torch.tensor(3),
                                                     torch.tensor(1)], ["x1", "x2", "w1", "w2", "column"]),
    "Softmax_5_20_10": lambda: (_seeded(lambda: SoftmaxModel(5, 20, 10, ones=False)), [_rows(5)], ["x"]),
    "BasicModel6": lambda: (BasicModel6MultiTensor(), [_rows(3), _rows(3)], ["x1", "x2"]),
    "ReLULinearScaled": lambda: (ReLULinearScaledModel(), [_rows(3), _rows(3), torch.tensor(1.0)], ["x1", "x2", "x3"]),
    "MaxPoolReLU": lambda: (MaxPoolReLU(), [torch.rand(2, 2, 3)], ["x"]),
}
