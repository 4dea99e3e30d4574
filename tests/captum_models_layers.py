"""Models of Captum's layer/neuron tests (tests/attr/layer, tests/attr/neuron) not already in
captum_models_more.py / captum_models.py, re-created with Captum's architectures (random weights
seeded as Captum's BaseTest seeds them) and exported to ONNX the same way. Names not defined here
fall through to captum_models_more (and from there to captum_models)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import captum_models_more as more
from captum_models import _seeded
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


more._BUILDERS.update(_BUILDERS)  # one table: loaded and cached as captum_models_more's own
load, torch_module, tensor = more.load, more.torch_module, more.tensor
