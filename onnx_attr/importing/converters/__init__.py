"""ONNX op -> torch module converters that onnx2torch lacks or gets wrong, one module per op family.

Importing this package registers every family with `registry.register`; `registry.find_converter`
looks ours up first and falls back to onnx2torch's. A new family is one module here plus one
line below.
"""

from onnx_attr.importing.converters import registry  # noqa: F401  (first: the families register into it)
from onnx_attr.importing.converters import (activations, arithmetic, attention, bitwise, cast, comparison, control_flow, convolution, image, indexing, linear, loss,  # noqa: F401,E402
               microsoft, ml, matrix, normalization, one_hot, padding, pooling, recurrent, reduce, resize, sampling, shape, signal,
               quantize, sequence, svm, training, unsigned)
