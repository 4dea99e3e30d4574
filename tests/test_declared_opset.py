"""Errors name the opset the file declares, not the one of the copy the importer upgraded."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

import onnx_attr
from conftest import FLOAT, make_model
from onnx_attr.errors import UnsupportedOpError


def test_unsupported_op_names_the_files_opset_after_an_upgrade():
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("TfIdfVectorizer", ["ids"], ["t"], name="tfidf", mode="TF", min_gram_length=1,
                              max_gram_length=1, max_skip_count=0, ngram_counts=[0], ngram_indexes=[0],
                              pool_int64s=[2])]
    proto = make_model(nodes, [("x", FLOAT, [2]), ("ids", TensorProto.INT64, [4])],
                       [("r", FLOAT, [2]), ("t", FLOAT, [1])], opset=12)
    with pytest.raises(UnsupportedOpError) as info:
        onnx_attr.load(proto)
    err = info.value
    assert err.opset == 12 and err.node_name == "tfidf"
    assert "opset 12" in str(err) and "ai.onnx opset 17" not in str(err)
    assert "also at opset 17, after onnx.version_converter's upgrade" in str(err)  # the upgrade did run


def test_importable_model_keeps_its_opset_in_errors_without_note():
    node = helper.make_node("TfIdfVectorizer", ["ids"], ["t"], name="tfidf", mode="TF", min_gram_length=1,
                            max_gram_length=1, max_skip_count=0, ngram_counts=[0], ngram_indexes=[0],
                            pool_int64s=[2])
    proto = make_model([node], [("ids", TensorProto.INT64, [4])], [("t", FLOAT, [1])], opset=17)
    with pytest.raises(UnsupportedOpError) as info:
        onnx_attr.load(proto)
    assert info.value.opset == 17 and "version_converter" not in str(info.value)
