"""onnx-attr: explain exported ONNX models.

    import onnx_attr
    model = onnx_attr.load("model.onnx")      # faithful import, final softmax/sigmoid stripped
    print(model.verify().format())             # proof against onnxruntime
"""

from .errors import (ConversionError, ExportError, ForwardError, InputError, ModelLoadError, OnnxAttrError,
                     OutputError, ReferenceRuntimeError, UnsupportedOpError)
from .loader import load
from .methods import (DeepLift, DeepLiftShap, GradientShap, InputXGradient, IntegratedGradients, LayerDeepLift, NoiseTunnel,
                      Saliency)
from .model import AttributableModel
from .verify import VerifyReport, verify

__version__ = "0.1.0"

__all__ = [
    "AttributableModel", "ConversionError", "DeepLift", "DeepLiftShap", "GradientShap", "InputXGradient",
    "IntegratedGradients",
    "LayerDeepLift", "NoiseTunnel", "Saliency", "ExportError", "ForwardError", "InputError", "ModelLoadError",
    "OnnxAttrError", "OutputError", "ReferenceRuntimeError", "UnsupportedOpError", "VerifyReport", "load",
    "verify", "__version__",
]
