"""onnx2torch's import does not import torchvision (and torch._dynamo) until a converter that
needs it runs; then the real function answers. The oracle: onnxruntime on a RoiAlign graph,
whose converter (onnx2torch's) calls torchvision.ops.roi_align."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from onnx_attr._lazy_torchvision import _deferred, _StandIn

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import onnx_attr
    from onnx import TensorProto, helper
    sys.path.insert(0, TESTS)
    from conftest import make_model, ort_run

    def graph(op):
        x = [("x", TensorProto.FLOAT, [1, 2, 6, 6]), ("rois", TensorProto.FLOAT, [2, 4]),
             ("idx", TensorProto.INT64, [2])]
        return make_model([op], x, [("y", TensorProto.FLOAT, [2, 2, 2, 2])], opset=16)

    plain = onnx_attr.load(graph(helper.make_node("Relu", ["x"], ["y"])))
    print("after a load:", "torchvision" in sys.modules, "torch._dynamo" in sys.modules)
    roi = helper.make_node("RoiAlign", ["x", "rois", "idx"], ["y"], output_height=2, output_width=2,
                           sampling_ratio=2, coordinate_transformation_mode="half_pixel")
    model = graph(roi)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 2, 6, 6)).astype(np.float32),
             "rois": np.array([[0, 0, 4, 4], [1, 1, 5, 3]], np.float32), "idx": np.zeros(2, np.int64)}
    ours = onnx_attr.load(model).run(feeds)[0].numpy()
    print("roi_align matches onnxruntime:", bool(np.allclose(ours, ort_run(model, feeds)[0], atol=1e-5)))
    print("torchvision module is the real one:", type(sys.modules["torchvision"]).__name__ == "module")
""")


@pytest.mark.slow  # a fresh interpreter imports torch
def test_torchvision_waits_for_a_converter_that_needs_it():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT.replace("TESTS", repr(str(ROOT / "tests")))], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "after a load: False False" in lines
    assert "roi_align matches onnxruntime: True" in lines
    assert "torchvision module is the real one: True" in lines


def test_a_deferred_name_calls_the_real_function():
    assert _deferred("math", "hypot")(3.0, 4.0) == 5.0


def test_a_stand_in_reads_the_real_module_once_the_import_is_over():
    import math

    stand_in = _StandIn("math")
    assert callable(stand_in.pi) and stand_in.pi is not math.pi  # during the import: a deferred name
    stand_in.__dict__["_importing"] = False
    assert stand_in.pi == math.pi and stand_in.sqrt is math.sqrt
    with pytest.raises(AttributeError):
        stand_in.__wrapped__
