"""scikit-learn's MLPClassifier exported by skl2onnx with default options (ZipMap, ArrayFeatureExtractor,
Cast): imports, verifies against onnxruntime, and its probability head is found and stripped."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_iris
from sklearn.neural_network import MLPClassifier

import onnx_attr

skl2onnx = pytest.importorskip("skl2onnx")


def _export(loader):
    x, y = loader(return_X_y=True)
    x = x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(x, y)
        return skl2onnx.to_onnx(clf, x[:1]), clf, x


@pytest.mark.parametrize("loader,head", [(load_iris, "Softmax"), (load_breast_cancer, "Sigmoid")],
                         ids=["multiclass-softmax", "binary-sigmoid-pair"])
def test_mlp_classifier_default_export(loader, head):
    proto, clf, x = _export(loader)
    kept = onnx_attr.load(proto, strip_final_activation=False)
    assert kept.verify(x[:20]).passed
    labels, probabilities = kept.run(x[:20])
    np.testing.assert_array_equal(labels.numpy(), clf.predict(x[:20]))
    np.testing.assert_allclose(probabilities.numpy(), clf.predict_proba(x[:20]), rtol=1e-4, atol=1e-5)

    model = onnx_attr.load(proto)
    final = next(o.final_activation for o in model.outputs if o.name == "output_probability")
    assert final.op_type == head and final.stripped and "ZipMap" in final.through
    report = model.verify(x[:20])
    assert report.passed, report.format()
    labels, logits = model.run(x[:20])
    np.testing.assert_array_equal(labels.numpy(), clf.predict(x[:20]))  # the label output is untouched
    np.testing.assert_array_equal(logits.numpy().argmax(1), clf.predict(x[:20]))
    dl = onnx_attr.DeepLift(model)
    target = clf.predict(x[:8]).tolist()
    attributions, delta = dl.attribute(x[:8], x.mean(0, keepdims=True), target=target, output="output_probability",
                                       return_convergence_delta=True)
    assert attributions.shape == (8, x.shape[1])
    assert np.abs(delta.numpy()).max() <= 1e-4 * max(1.0, float(np.abs(logits.numpy()).max()))
