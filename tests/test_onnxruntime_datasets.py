"""The sample models onnxruntime ships in its own wheel (`onnxruntime/datasets`), files nobody here
wrote: old IR and old exporters (OnnxMLTools 1.2, IR 3). Each imports, matches onnxruntime on the
same inputs, and DeepLift through it is complete."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import onnx_attr

DATASETS = Path(ort.__file__).parent / "datasets"
X = np.array([[5.1, 3.5], [6.2, 2.9], [7.0, 3.2]], np.float32)  # iris-scale values


def _feeds(name: str) -> dict:
    if name == "sigmoid.onnx":
        return {"x": (np.random.default_rng(0).standard_normal((3, 4, 5)) * 8).astype(np.float32)}
    return {"float_input" if name == "logreg_iris.onnx" else "X": X}


@pytest.mark.parametrize("name", ["logreg_iris.onnx", "mul_1.onnx", "sigmoid.onnx"])
def test_onnxruntime_sample_models_import_match_and_are_complete(name):
    path = DATASETS / name
    if not path.exists():
        pytest.skip(f"{name} is not in this onnxruntime wheel")
    feeds = _feeds(name)
    model = onnx_attr.load(str(path), strip_final_activation=False)  # compared as written
    report = model.verify(feeds)
    assert report.passed, report
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    index = next(i for i, o in enumerate(model.outputs) if np.issubdtype(o.dtype, np.floating))
    want = session.run(None, feeds)[index]
    if isinstance(want, list):  # ZipMap: a dict per row
        want = np.array([[row[k] for k in sorted(row)] for row in want], np.float32)
    np.testing.assert_allclose(model.run(feeds)[index].numpy(), want, rtol=1e-5, atol=1e-6)
    target = (0,) * (len(feeds[next(iter(feeds))].shape) - 1)
    _, delta = onnx_attr.DeepLift(model).attribute(feeds, target=target, output=index, return_convergence_delta=True)
    assert float(np.abs(np.asarray(delta)).max()) < 1e-5


def test_coefficients_beyond_the_declared_features_are_read_as_onnxruntime_reads_them():
    """logreg_iris.onnx declares a [3, 2] input for 12 coefficients over 3 classes: onnxruntime takes
    the first 3 × 2, row by row (not the first two of four columns), and so does the import."""
    path = DATASETS / "logreg_iris.onnx"
    if not path.exists():
        pytest.skip("logreg_iris.onnx is not in this onnxruntime wheel")
    import onnx

    node = onnx.load(str(path)).graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    rows = np.array(attrs["coefficients"], np.float32)[:6].reshape(3, 2)
    scores = 1 / (1 + np.exp(-(X @ rows.T + np.array(attrs["intercepts"], np.float32))))
    model = onnx_attr.load(str(path), strip_final_activation=False)
    np.testing.assert_allclose(model.run({"float_input": X})[1].numpy(), scores / scores.sum(1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    stripped = onnx_attr.load(str(path))  # the scores before LOGISTIC and the L1 Normalizer
    assert stripped.outputs[1].final_activation.stripped
    np.testing.assert_allclose(stripped.run({"float_input": X})[1].numpy(),
                               X @ rows.T + np.array(attrs["intercepts"], np.float32), rtol=1e-5, atol=1e-5)


def test_its_float16_conversion_without_an_onnx_opset_import_loads(tmp_path):
    """onnxruntime's own float16 converter (keep_io_types) on logreg_iris.onnx, which imports ai.onnx.ml
    alone, adds four ai.onnx Casts and no ai.onnx import: onnxruntime runs it (a domain left out gets its
    latest opset), the checker refused it. It imports, matches onnxruntime, and DeepLift is complete."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(DATASETS / "logreg_iris.onnx")), keep_io_types=True)
    assert [o.domain for o in half.opset_import] == ["ai.onnx.ml"] and any(n.op_type == "Cast" for n in half.graph.node)
    onnx.save(half, tmp_path / "half.onnx")
    model = onnx_attr.load(str(tmp_path / "half.onnx"), strip_final_activation=False)
    assert model.verify({"float_input": X}).passed
    want = ort.InferenceSession(str(tmp_path / "half.onnx"), providers=["CPUExecutionProvider"]).run(None, {"float_input": X})
    index = next(i for i, o in enumerate(model.outputs) if np.issubdtype(o.dtype, np.floating))
    got = model.run({"float_input": X})[index].numpy()
    np.testing.assert_allclose(got, np.array([[row[k] for k in sorted(row)] for row in want[index]]), rtol=1e-3, atol=1e-3)
    method = onnx_attr.DeepLift(model)
    method.attribute(X, target=0)
    assert method.last_report["max_relative_delta"] <= 1e-4
