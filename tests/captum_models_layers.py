"""Models of Captum's layer/neuron tests (tests/attr/layer, tests/attr/neuron) not already in
captum_models_more.py / captum_models.py, re-created with Captum's architectures (random weights
seeded as Captum's BaseTest seeds them) and exported to ONNX the same way. Names not defined here
fall through to captum_models_more (and from there to captum_models)."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

import onnx_attr
import captum_models_more as more
from captum_models import _seeded, export
from captum_models import BasicModelMultiLayerMultiInput, _rows
from captum_models_more import SimpleLRPModel


class Conv1dSeqModel(nn.Module):
    """Captum's Conv1dSeqModel: Sequential(Conv1d(4, 2, 1), ReLU, Linear(1000, 1))."""

    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv1d(4, 2, 1), nn.ReLU(), nn.Linear(1000, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class SimpleLRPInplace(SimpleLRPModel):
    """SimpleLRPModel(inplace=True)."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)


_BUILDERS = {
    "Conv1dSeq": lambda: (_seeded(Conv1dSeqModel), [torch.rand(2, 4, 1000)], ["x"]),
    "SeqConvReLU": lambda: (_seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True))),
                            [torch.rand(2, 3, 5, 5)], ["x"]),
    "SimpleLRP_inplace": lambda: (SimpleLRPInplace(), [torch.rand(2, 3)], ["x"]),
    # BasicModel_MultiLayer_MultiInput with a float scale (test_layer_gradient_shap passes 1.0)
    "MultiLayerMultiInput_fscale": lambda: (BasicModelMultiLayerMultiInput(), [_rows(3), _rows(3), _rows(3),
                                                                              torch.tensor(1.0)],
                                            ["x1", "x2", "x3", "scale"]),
}


def torch_module(name: str) -> nn.Module:
    if name in _BUILDERS:
        return _BUILDERS[name]()[0].eval()
    return more.torch_module(name)


def load(name: str):
    """As captum_models_more.load: loaded once, torch's generator left as found."""
    if name not in _BUILDERS:
        return more.load(name)
    state = torch.get_rng_state()
    try:
        return _load(name)
    finally:
        torch.set_rng_state(state)


@functools.lru_cache(maxsize=None)
def _load(name: str):
    module, examples, names = _BUILDERS[name]()
    return onnx_attr.load(export(module, examples, names), strip_final_activation=False)


tensor = more.tensor
