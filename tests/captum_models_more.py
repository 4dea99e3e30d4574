"""More of Captum's test models (captum/testing/helpers/basic_models.py and models defined inline in
Captum's tests), re-created with the same weights and exported to ONNX as tests/captum_models.py
does. `load(name)` gives the imported onnx_attr model, `torch_module(name)` the PyTorch original;
names not defined here fall through to tests/captum_models.py."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

import onnx_attr
import captum_models as base
from captum_models import BasicModelMultiLayer, BasicModelMultiLayerMultiInput, export


class SimpleLRPModel(nn.Module):
    """Captum's SimpleLRPModel: Linear(3,3, w=2, no bias) - ReLU - Linear(3,1, w=3, no bias) - Dropout
    (eval: identity). `w00` overwrites linear.weight[0][0] (Captum's GammaRule/AlphaBeta/Identity tests)."""

    def __init__(self, w00: float | None = None):
        super().__init__()
        self.linear = nn.Linear(3, 3, bias=False)
        self.linear2 = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.linear.weight.fill_(2.0)
            self.linear2.weight.fill_(3.0)
            if w00 is not None:
                self.linear.weight[0][0] = w00
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(p=0.01)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.linear2(self.relu(self.linear(x))))


class LRPTanh(nn.Module):
    """test_lrp.py::test_lrp_simple_tanh's inline Model."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 3, bias=False)
        self.linear2 = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.linear.weight.fill_(0.1)
            self.linear2.weight.fill_(0.1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(torch.tanh(self.linear(x)))


class SkipConnection(nn.Module):
    """test_lrp.py::test_lrp_skip_connection: linear(x) + x, Linear(2,2, w=5, no bias)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.linear.weight.fill_(5.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x) + x


class LRPMaxPool1d(nn.Module):
    """test_lrp.py::test_lrp_maxpool1D: MaxPool1d(2)(Linear(2,2, w=2, no bias)(x))."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.linear.weight.fill_(2.0)
        self.maxpool = nn.MaxPool1d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.maxpool(self.linear(x))


class MaxPool(nn.Module):
    def __init__(self, dims: int):
        super().__init__()
        self.maxpool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims](2)

    def forward(self, x: Tensor) -> Tensor:
        return self.maxpool(x)


class SumLast(nn.Module):
    """test_feature_permutation.py's forward_func x.sum(dim=-1)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.sum(dim=-1)


class OneMinus(nn.Module):
    """test_feature_permutation.py's forward_func 1 - x."""

    def forward(self, x: Tensor) -> Tensor:
        return 1 - x


class SumOverBatch(nn.Module):
    """Captum's scalar-per-batch forward funcs: torch.sum(net(inp)) (0-d) or .reshape(1) (1-d)."""

    def __init__(self, net: nn.Module, one_d: bool):
        super().__init__()
        self.net, self.one_d = net, one_d

    def forward(self, x: Tensor) -> Tensor:
        out = torch.sum(self.net(x))
        return out.reshape(1) if self.one_d else out


class SumOverBatchMultiInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = BasicModelMultiLayerMultiInput()

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor, scale: Tensor) -> Tensor:
        return torch.sum(self.net(x1, x2, x3, scale))


class MultiLayerPlusOnes(nn.Module):
    """test_shapley.py multi-task forward_func: cat([net(x), ones(N, k)], -1)."""

    def __init__(self, k: int):
        super().__init__()
        self.net, self.k = BasicModelMultiLayer(), k

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return torch.cat([out, torch.ones_like(out[:, :1]).expand(-1, self.k)], dim=-1)


def _rows(*shape: int) -> Tensor:
    return torch.rand(2, *shape)


_MI = lambda: [_rows(3), _rows(3), _rows(3), torch.tensor(1)]  # noqa: E731

_BUILDERS = {
    "SimpleLRP": lambda: (SimpleLRPModel(), [_rows(3)], ["x"]),
    "SimpleLRP_w00": lambda: (SimpleLRPModel(-2.0), [_rows(3)], ["x"]),
    "LRPTanh": lambda: (LRPTanh(), [_rows(3)], ["x"]),
    "SkipConnection": lambda: (SkipConnection(), [_rows(2)], ["x"]),
    "LRPMaxPool1d": lambda: (LRPMaxPool1d(), [torch.rand(2, 2, 2)], ["x"]),
    "MaxPool2d": lambda: (MaxPool(2), [torch.rand(2, 1, 2, 2)], ["x"]),
    "MaxPool3d": lambda: (MaxPool(3), [torch.rand(2, 1, 2, 2, 2)], ["x"]),
    "SumLast": lambda: (SumLast(), [_rows(6)], ["x"]),
    "SumLast2": lambda: (SumLast(), [_rows(2)], ["x"]),
    "OneMinus": lambda: (OneMinus(), [_rows(4)], ["x"]),
    "SumMultiLayer_0d": lambda: (SumOverBatch(BasicModelMultiLayer(), False), [_rows(3)], ["x"]),
    "SumMultiLayer_1d": lambda: (SumOverBatch(BasicModelMultiLayer(), True), [_rows(3)], ["x"]),
    "SumMultiLayerMultiInput_0d": lambda: (SumOverBatchMultiInput(), _MI(),
                                           ["x1", "x2", "x3", "scale"]),
    "MultiLayerPlusOnes2": lambda: (MultiLayerPlusOnes(2), [_rows(3)], ["x"]),
    "MultiLayerPlusOnes1": lambda: (MultiLayerPlusOnes(1), [_rows(3)], ["x"]),
}


def torch_module(name: str) -> nn.Module:
    if name in _BUILDERS:
        return _BUILDERS[name]()[0].eval()
    return base.torch_module(name)


def load(name: str):
    """The model, loaded once; torch's generator is left as found (a first load builds the module,
    which draws), so a case's draws do not depend on which cases ran before it. (Captum's tests draw
    after building their module, whose layers differ from these: a case that needs Captum's state
    builds Captum's own module first, as test_captum_expectations_layers.py does.)"""
    state = torch.get_rng_state()
    try:
        return _load(name)
    finally:
        torch.set_rng_state(state)


@functools.lru_cache(maxsize=None)
def _load(name: str):
    module, examples, names = (_BUILDERS[name] if name in _BUILDERS else base._BUILDERS[name])()
    return onnx_attr.load(export(module, examples, names), strip_final_activation=False)


def tensor(model, op: str, nth: int = 0) -> str:
    """The ONNX tensor computed by the nth node (negative: from the end) of type `op`."""
    found = [n.meta["onnx_tensor"] for n in model.module.graph.nodes
             if n.meta.get("onnx_op") == op and "onnx_tensor" in n.meta]
    return found[nth]
