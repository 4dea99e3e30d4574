"""onnx-attr: explain exported ONNX models.

    import onnx_attr
    model = onnx_attr.load("model.onnx")      # faithful import, final softmax/sigmoid stripped
    print(model.verify().format())             # proof against onnxruntime
    onnx_attr.DeepLift(model).attribute(x, target=3)
"""

from .budget import Budget
from .errors import (BudgetError, ConversionError, ExportError, ForwardError, InputError, ModelLoadError, OnnxAttrError,
                     OutputError, ReferenceRuntimeError, UnsupportedOpError)
from .loader import load
from .methods import (DeepLift, DeepLiftShap, FeatureAblation, GradientShap, InputXGradient, IntegratedGradients,
                      LayerDeepLift, LayerIntegratedGradients, NeuronDeepLift, NeuronIntegratedGradients, NoiseTunnel,
                      Occlusion, Saliency)
from .layers import tensor_as_input, tensor_as_output
from .metrics import infidelity, parameter_randomization, sensitivity_max
from .smooth import smooth
from .model import AttributableModel
from .verify import VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    # import and verification
    "AttributableModel", "Budget", "VerifyReport", "load", "verify",
    # attribution methods
    "DeepLift", "DeepLiftShap", "FeatureAblation", "GradientShap", "InputXGradient", "IntegratedGradients",
    "LayerDeepLift", "LayerIntegratedGradients", "NeuronDeepLift", "NeuronIntegratedGradients", "NoiseTunnel",
    "Occlusion", "Saliency",
    # hidden tensors by ONNX name, as an output (neurons) or an input (layers), for any method
    "tensor_as_input", "tensor_as_output",
    # evaluation metrics
    "infidelity", "parameter_randomization", "sensitivity_max",
    # Relu -> Softplus(β), MaxPool -> log-sum-exp pooling, with the output change reported
    "smooth",
    # errors
    "BudgetError", "ConversionError", "ExportError", "ForwardError", "InputError", "ModelLoadError", "OnnxAttrError", "OutputError",
    "ReferenceRuntimeError", "UnsupportedOpError",
    "__version__",
]
