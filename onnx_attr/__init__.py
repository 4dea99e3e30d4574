"""onnx-attr: explain exported ONNX models.

    import onnx_attr
    model = onnx_attr.load("model.onnx")      # faithful import, final softmax/sigmoid stripped
    print(model.verify().format())             # proof against onnxruntime
    onnx_attr.DeepLift(model).attribute(x, target=3)

The public names are imported on first use (module `__getattr__`), so `import onnx_attr` and
`onnx-attr --help` do not pay for torch, onnx and onnx2torch until something needs them.
"""

from __future__ import annotations

import importlib
import os
import sys

# Idle OpenMP workers sleep instead of spinning (GNU OpenMP spins for milliseconds after every
# parallel op by default). On a shared or oversubscribed machine a spinning worker takes the core
# the other thread needs, and each op of a model waits on it: forwards measured 3-5x slower (a
# 640x640 YOLOv8 12 s -> 4 s, a 501-step decoder Loop 66 s -> 16 s on 2 loaded cores). Read once
# when torch loads OpenMP, so only before torch is imported; a value the user set is kept.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from typing import TYPE_CHECKING, Any

from onnx_attr.errors import (BaselineForwardError, BudgetError, ConversionError, ExportError, ForwardError, InputError,
                     ModelLoadError, OnnxAttrError, OutputError, ReferenceRuntimeError, UnsupportedOpError)

__version__ = "0.1.0"

from onnx_attr import _moved

_moved.install()  # old module paths (onnx_attr.engine, ...) still import, with a DeprecationWarning

from onnx_attr import _lazy_torchvision

_lazy_torchvision.install()  # onnx2torch's import does not pay for torchvision (and torch._dynamo) up front


def _method_classes() -> list[str]:
    """Every attribution class the method registry lists (without importing torch)."""
    from onnx_attr.methods import __all__ as names

    return list(names)


#: Public name -> the submodule that defines it; imported when the name is first read.
_LAZY = {
    "load": "importing.loader", "Budget": "importing.budget",
    "AttributableModel": "importing.model",
    "VerifyReport": "importing.verify", "verify": "importing.verify",
    **{name: "methods" for name in _method_classes()},
    "tensor_as_input": "deeplift.layers", "tensor_as_output": "deeplift.layers", "Target": "deeplift.targets",
    "named_target": "app.target_forms",
    **{name: "methods.lrp" for name in ("AlphaBeta", "Composite", "Epsilon", "Flat", "Gamma", "Identity", "ZBox",
                                        "ZPlus")},
    "infidelity": "methods.metrics", "parameter_randomization": "methods.metrics", "sensitivity_max": "methods.metrics",
    "smooth": "deeplift.smooth", "blurred": "methods.blur",
    "attribute_dataset": "app.dataset_job", "read_results": "app.dataset_job",
    "read_inputs": "app.readers", "InputOptions": "app.readers", "image_preprocessing": "app.preprocess",
    "text_preprocessing": "app.text_inputs", "keep_freed_memory": "app.allocator",
}

if TYPE_CHECKING:  # what static checkers and IDEs see; at run time these come from __getattr__
    from onnx_attr.deeplift.layers import tensor_as_input, tensor_as_output
    from onnx_attr.importing.budget import Budget
    from onnx_attr.importing.loader import load
    from onnx_attr.methods import (DeepLift, DeepLiftShap, FeatureAblation, GradientShap, InputXGradient,
                          IntegratedGradients, LayerDeepLift, LayerIntegratedGradients, NeuronDeepLift,
                          NeuronIntegratedGradients, NoiseTunnel, Occlusion, Saliency)
    from onnx_attr.methods.metrics import infidelity, parameter_randomization, sensitivity_max
    from onnx_attr.importing.model import AttributableModel
    from onnx_attr.app.dataset_job import attribute_dataset, read_results
    from onnx_attr.deeplift.smooth import smooth
    from onnx_attr.deeplift.targets import Target
    from onnx_attr.app.target_forms import named_target
    from onnx_attr.importing.verify import VerifyReport, verify
    from onnx_attr.app.preprocess import image_preprocessing
    from onnx_attr.app.readers import InputOptions, read_inputs
    from onnx_attr.app.text_inputs import text_preprocessing
    from onnx_attr.app.allocator import keep_freed_memory


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onnx_attr' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later reads skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    # import and verification
    "AttributableModel", "Budget", "VerifyReport", "load", "verify",
    # attribution methods (every class of the method registry, and NoiseTunnel)
    *_method_classes(),
    # hidden tensors by ONNX name, as an output (neurons) or an input (layers), for any method
    "tensor_as_input", "tensor_as_output",
    # what to explain on dense outputs: a mask (Σ weights·output) or an index on another batch axis; the
    # CLI's --target forms (top, region, greedy, anchor) resolved on the model's output
    "Target", "named_target",
    # LRP's rules and composites, as objects (LRP(model, rule=Gamma(0.5)), rules={node: Identity()})
    "AlphaBeta", "Composite", "Epsilon", "Flat", "Gamma", "Identity", "ZBox", "ZPlus",
    # evaluation metrics
    "infidelity", "parameter_randomization", "sensitivity_max",
    # Relu -> Softplus(β), MaxPool -> log-sum-exp pooling, with the output change reported
    "smooth",
    # whole datasets into Parquet shards, each row exactly once
    "attribute_dataset", "read_results",
    # files users have (images, CSV/Parquet rows, text) as model inputs
    "read_inputs", "InputOptions", "image_preprocessing", "text_preprocessing",
    # glibc's malloc keeping freed feature maps for reuse (the CLI's default; the API's on request)
    "keep_freed_memory",
    # errors
    "BaselineForwardError", "BudgetError", "ConversionError", "ExportError", "ForwardError", "InputError", "ModelLoadError", "OnnxAttrError", "OutputError",
    "ReferenceRuntimeError", "UnsupportedOpError",
    "__version__",
]
