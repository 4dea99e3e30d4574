"""Models for tests/test_captum_expectations_extra.py (Captum's test_targets config, and the remaining
cases of test_deeplift_basic, test_input_x_gradient, neuron/test_neuron_deeplift,
layer/test_layer_integrated_gradients, test_integrated_gradients_basic). Where Captum's module can be
exported as it stands, it is (captum.testing.helpers.basic_models, same weights); a wrapper fixes
the Python-valued arguments Captum passes (None, True, an int column) into the graph. Names not
defined here fall through to captum_models_layers / captum_models_more / captum_models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import captum_models_layers  # noqa: F401  (registers its builders in captum_models_more's table)
import captum_models_more as more
from captum_models import _rows, _seeded


class MultiDim(nn.Module):
    """BasicModel_MultiLayer(x, None, True): the [N, 2, 2, 2] output the tuple targets index
    (Captum passes additional_forward_args=(None, True); here the flag is built in)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x, None, True)


class IntScale(nn.Module):
    """BasicModel_MultiLayer_MultiInput with its int `scale` a 0-d int64 input (as captum_models)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor, scale: Tensor) -> Tensor:
        return self.net.model(scale * (x1 + x2 + x3))


class BasicModel4Column(nn.Module):
    """Captum's BasicModel4_MultiArgs with its int column (additional_input2) a 0-d int64 input, picked
    with index_select (as captum_models' BasicModel5): Captum's second test_multi_argument call,
    `additional_forward_args=(arange(1.0, 7.0).reshape(2, 3), 1)`, keeps its form."""

    def forward(self, x1: Tensor, x2: Tensor, divisor: Tensor, column: Tensor) -> Tensor:
        out = F.relu(F.relu(x1 - 1) - F.relu(x2).div(divisor))
        return torch.index_select(out, 1, column.reshape(1)).squeeze(1)


class TrueMultiInputShared(nn.Module):
    """BasicModel_MultiLayer_TrueMultiInput called with x4=None: m1(x1) + m234(x2, x3, x1, 1)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor) -> Tensor:
        return self.net(x1, x2, x3)


def _captum(cls: str, **kwargs):
    from captum.testing.helpers import basic_models

    return getattr(basic_models, cls)(**kwargs)


def _captum_seeded(cls: str, **kwargs):
    return _seeded(lambda: _captum(cls, **kwargs))


_BUILDERS = {
    "C_MultiLayer": lambda: (_captum("BasicModel_MultiLayer"), [_rows(3)], ["x"]),
    "C_MultiLayer_multidim": lambda: (MultiDim(_captum("BasicModel_MultiLayer")), [_rows(3)], ["x"]),
    "C_MultiLayerMultiInput": lambda: (IntScale(_captum("BasicModel_MultiLayer_MultiInput")),
                                       [_rows(3), _rows(3), _rows(3), torch.tensor(1)], ["x1", "x2", "x3", "scale"]),
    "C_ReLUDeepLift": lambda: (_captum("ReLUDeepLiftModel"), [_rows(1), _rows(1)], ["x1", "x2"]),
    "C_TanhDeepLift": lambda: (_captum("TanhDeepLiftModel"), [_rows(1), _rows(1)], ["x1", "x2"]),
    "C_ReLULinear": lambda: (_captum("ReLULinearModel"), [_rows(3), _rows(3)], ["x1", "x2"]),
    "C_ReLUDeepLift_1d": lambda: (_captum("ReLUDeepLiftModel"), [torch.rand(2), torch.rand(2)], ["x1", "x2"]),
    "C_TanhDeepLift_1d": lambda: (_captum("TanhDeepLiftModel"), [torch.rand(2), torch.rand(2)], ["x1", "x2"]),
    "BasicModel4_col": lambda: (BasicModel4Column(), [_rows(3), _rows(3), _rows(3), torch.tensor(1)],
                                ["x1", "x2", "divisor", "column"]),
    "C_ConvNet": lambda: (_captum_seeded("BasicModel_ConvNet"), [torch.rand(2, 1, 10, 10)], ["x"]),
    "C_ConvNet_MaxPool3d": lambda: (_captum_seeded("BasicModel_ConvNet_MaxPool3d"), [torch.rand(2, 1, 10, 10, 10)],
                                    ["x"]),
    "C_TrueMultiInput": lambda: (_captum("BasicModel_MultiLayer_TrueMultiInput"), [_rows(3) for _ in range(4)],
                                 ["x1", "x2", "x3", "x4"]),
    "C_TrueMultiInputShared": lambda: (TrueMultiInputShared(_captum("BasicModel_MultiLayer_TrueMultiInput")),
                                       [_rows(3) for _ in range(3)], ["x1", "x2", "x3"]),
    # BasicEmbeddingModel(nested_second_embedding=True), its random weights seeded as Captum's BaseTest
    "C_Embedding": lambda: (_captum_seeded("BasicEmbeddingModel", nested_second_embedding=True),
                            [torch.randint(0, 30, (2, 4)), torch.randint(0, 30, (2, 4)), torch.randint(0, 30, (2, 4))],
                            ["input1", "input2", "input3"]),
}


more._BUILDERS.update(_BUILDERS)
# test_captum_expectations.py's IG helpers load from captum_models' own table
import captum_models as _base  # noqa: E402

_base._BUILDERS["BasicModel4_col"] = _BUILDERS["BasicModel4_col"]
load, torch_module, tensor = more.load, more.torch_module, more.tensor
