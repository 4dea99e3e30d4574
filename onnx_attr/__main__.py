"""`python -m onnx_attr ...`: the command line, as the `onnx-attr` script runs it."""

import sys

from onnx_attr.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
