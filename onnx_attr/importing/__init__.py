"""Import: read and check an ONNX file, normalize it, convert it to torch, prove it against onnxruntime."""
