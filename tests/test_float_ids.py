"""Ids held in a floating input (tf2onnx's float bytes into a OneHot, magika 0.5): a float input
whose every path goes through a Cast to an integer type carries no gradient, so it is attributed
as token ids are, at its one-hot or embedding. An input also used as a float stays a float input."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import onnx_attr
from onnx_attr.importing.specs import cast_id_inputs

L, DEPTH, CLASSES = 4, 5, 3
RNG = np.random.default_rng(0)
W = RNG.standard_normal((L * DEPTH, CLASSES)).astype(np.float32)


def _model(nodes, inits, output_shape=("N", CLASSES), inputs=None):
    graph = helper.make_graph(
        nodes, "g", inputs or [helper.make_tensor_value_info("ids", TensorProto.FLOAT, ["N", L])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def one_hot_model(extra_float_use: bool = False):
    """float ids -> Cast(INT64) -> OneHot -> Reshape -> MatMul -> Softmax (tf2onnx's magika 0.5 head)."""
    nodes = [helper.make_node("Identity", ["ids"], ["same"]),
             helper.make_node("Cast", ["same"], ["ids64"], to=TensorProto.INT64),
             helper.make_node("OneHot", ["ids64", "depth", "values"], ["hot"], axis=-1),
             helper.make_node("Reshape", ["hot", "flat"], ["flat_hot"]),
             helper.make_node("MatMul", ["flat_hot", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["y"], axis=-1)]
    inits = {"depth": np.array(DEPTH, np.int64), "values": np.array([0, 1], np.float32),
             "flat": np.array([-1, L * DEPTH], np.int64), "w": W}
    if extra_float_use:  # the same input also scales the logits as a float: not ids
        nodes[-1:] = [helper.make_node("ReduceSum", ["ids"], ["total"], keepdims=1),
                      helper.make_node("Mul", ["logits", "total"], ["scaled"]),
                      helper.make_node("Softmax", ["scaled"], ["y"], axis=-1)]
    return _model(nodes, inits)


TABLE = RNG.standard_normal((DEPTH, 2)).astype(np.float32)
W1 = RNG.standard_normal((L * 2, 6)).astype(np.float32)
W2 = RNG.standard_normal((6, CLASSES)).astype(np.float32)


def gather_model():
    """float ids -> Unsqueeze/Squeeze -> Cast(INT32) -> Gather of a table -> MLP with a Relu."""
    nodes = [helper.make_node("Unsqueeze", ["ids", "zero"], ["wide"]),
             helper.make_node("Squeeze", ["wide", "zero"], ["back"]),
             helper.make_node("Shape", ["ids"], ["shape"]),  # a shape read is no float use
             helper.make_node("Cast", ["back"], ["ids32"], to=TensorProto.INT32),
             helper.make_node("Gather", ["table", "ids32"], ["emb"], axis=0),
             helper.make_node("Reshape", ["emb", "flat"], ["flat_emb"]),
             helper.make_node("MatMul", ["flat_emb", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    inits = {"zero": np.array([0], np.int64), "table": TABLE, "flat": np.array([-1, L * 2], np.int64),
             "w1": W1, "w2": W2}
    return _model(nodes, inits)


IDS = np.array([[1, 4, 0, 2], [3, 3, 1, 0]], np.float32)


def test_only_inputs_cast_to_integers_are_ids():
    assert cast_id_inputs(one_hot_model().graph) == {"ids"}
    assert cast_id_inputs(gather_model().graph) == {"ids"}
    assert cast_id_inputs(one_hot_model(extra_float_use=True).graph) == set()
    model = onnx_attr.load(one_hot_model())
    (spec,) = model.inputs
    assert not spec.differentiable and spec.integer_ids and "ids" in spec.describe()
    assert spec.to_dict()["ids"] is True and spec.to_dict()["differentiable"] is False
    partly = onnx_attr.load(one_hot_model(extra_float_use=True)).inputs[0]
    assert partly.differentiable and not partly.integer_ids


def test_a_cast_to_float_or_a_returned_input_keeps_it_a_float_input():
    to_double = _model([helper.make_node("Cast", ["ids"], ["d"], to=TensorProto.DOUBLE),
                        helper.make_node("ReduceSum", ["d"], ["s"], keepdims=0),
                        helper.make_node("Cast", ["s"], ["y"], to=TensorProto.FLOAT)], {}, ("N",))
    assert cast_id_inputs(to_double.graph) == set()
    returned = _model([helper.make_node("Cast", ["ids"], ["i"], to=TensorProto.INT64),
                       helper.make_node("Identity", ["ids"], ["y"])], {}, ("N", L))
    assert cast_id_inputs(returned.graph) == set()


def test_the_forward_pass_and_verify_take_floats_as_declared():
    model = onnx_attr.load(one_hot_model(), strip_final_activation=False)
    expected = ort.InferenceSession(one_hot_model().SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"ids": IDS})[0]
    np.testing.assert_allclose(model.run({"ids": IDS})[0].numpy(), expected, rtol=1e-6, atol=1e-7)
    assert model.verify({"ids": IDS}).passed
    assert model.verify().passed  # the random sample holds whole numbers


@pytest.mark.parametrize("method", ["DeepLift", "IntegratedGradients"])
def test_one_hot_ids_are_attributed_per_token_with_the_hand_values(method):
    """After the one-hot the logits are linear: token l's share is W[l, x_l] - W[l, x'_l] exactly."""
    model = onnx_attr.load(one_hot_model())
    explainer = getattr(onnx_attr, method)(model)
    attributions, delta = explainer.attribute({"ids": IDS}, target=1, return_convergence_delta=True)
    hand = np.stack([[W[l * DEPTH + int(x), 1] - W[l * DEPTH + 0, 1] for l, x in enumerate(row)] for row in IDS])
    np.testing.assert_allclose(np.asarray(attributions["ids"]), hand, rtol=1e-5, atol=1e-6)
    assert float(np.abs(np.asarray(delta)).max()) < 1e-5
    assert explainer.embedded_inputs == ["ids"]


def test_gathered_ids_match_captum_on_the_embeddings_and_are_complete():
    from captum.attr import DeepLift as CaptumDeepLift

    model = onnx_attr.load(gather_model())
    attributions, delta = onnx_attr.DeepLift(model).attribute({"ids": IDS}, target=2, return_convergence_delta=True)
    ours = np.asarray(attributions["ids"])
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(L * 2, 6, bias=False), torch.nn.ReLU(),
                              torch.nn.Linear(6, CLASSES, bias=False))
    net[1].weight.data, net[3].weight.data = torch.from_numpy(W1.T.copy()), torch.from_numpy(W2.T.copy())
    emb = torch.from_numpy(TABLE[IDS.astype(np.int64)])
    reference = torch.from_numpy(TABLE[np.zeros_like(IDS, np.int64)])
    theirs = CaptumDeepLift(net).attribute(emb, reference, target=2).sum(-1).detach().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    out = model.run({"ids": IDS})[0][:, 2].double() - model.run({"ids": np.zeros_like(IDS)})[0][:, 2].double()
    np.testing.assert_allclose(ours.sum(1), out.numpy(), rtol=1e-5, atol=1e-6)
    assert float(np.abs(np.asarray(delta)).max()) < 1e-5


def test_noise_is_not_added_to_float_ids():
    model = onnx_attr.load(one_hot_model())
    plain = onnx_attr.IntegratedGradients(model).attribute({"ids": IDS}, target=0)
    torch.manual_seed(0)
    smoothed = onnx_attr.NoiseTunnel(onnx_attr.IntegratedGradients(model)).attribute(
        {"ids": IDS}, target=0, nt_samples=3, stdevs=5.0)
    np.testing.assert_allclose(np.asarray(smoothed["ids"]), np.asarray(plain["ids"]), rtol=1e-5, atol=1e-6)


def test_non_finite_float_ids_are_a_clear_error():
    model = onnx_attr.load(one_hot_model())
    bad = IDS.copy()
    bad[0, 0] = np.nan
    with pytest.raises(onnx_attr.InputError, match="ids"):
        onnx_attr.DeepLift(model).attribute({"ids": bad}, target=0)


def masked_gather_model():
    """A Keras Embedding(mask_zero=True) on Keras' default float input, as tf2onnx writes it: the
    float ids cast to INT32 into a Gather, and compared to 0 for the padding mask that zeroes the
    padded tokens' embeddings (a comparison gives booleans: no float use of the ids)."""
    nodes = [helper.make_node("Cast", ["ids"], ["ids32"], to=TensorProto.INT32),
             helper.make_node("Gather", ["table", "ids32"], ["emb"], axis=0),
             helper.make_node("Equal", ["ids", "pad"], ["is_pad"]),
             helper.make_node("Not", ["is_pad"], ["keep"]),
             helper.make_node("Cast", ["keep"], ["keep_f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["keep_f", "last"], ["keep_e"]),
             helper.make_node("Mul", ["emb", "keep_e"], ["masked"]),
             helper.make_node("Reshape", ["masked", "flat"], ["flat_emb"]),
             helper.make_node("MatMul", ["flat_emb", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    inits = {"pad": np.array(0, np.float32), "last": np.array([-1], np.int64), "table": TABLE,
             "flat": np.array([-1, L * 2], np.int64), "w1": W1, "w2": W2}
    return _model(nodes, inits)


def test_float_ids_with_a_padding_mask_are_ids_and_match_captum_with_the_mask_held():
    """The mask is read from the ids in both passes (the tokens padded in the input stay padded at
    the reference), so Captum's DeepLift on the embeddings, through the same net with the input's
    mask fixed, gives the same per-token attributions; and they are complete."""
    from captum.attr import DeepLift as CaptumDeepLift

    assert cast_id_inputs(masked_gather_model().graph) == {"ids"}
    model = onnx_attr.load(masked_gather_model())
    assert model.inputs[0].integer_ids
    attributions, delta = onnx_attr.DeepLift(model).attribute({"ids": IDS}, target=2, return_convergence_delta=True)
    ours = np.asarray(attributions["ids"])
    keep = torch.from_numpy((IDS != 0).astype(np.float32))[..., None]
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(L * 2, 6, bias=False), torch.nn.ReLU(),
                              torch.nn.Linear(6, CLASSES, bias=False))
    net[1].weight.data, net[3].weight.data = torch.from_numpy(W1.T.copy()), torch.from_numpy(W2.T.copy())

    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, e):  # Captum runs inputs and references as one batch: the mask for both
            return self.net(e * keep.repeat(e.shape[0] // keep.shape[0], 1, 1))

    emb = torch.from_numpy(TABLE[IDS.astype(np.int64)])
    reference = torch.from_numpy(TABLE[np.zeros_like(IDS, np.int64)])
    theirs = CaptumDeepLift(Masked()).attribute(emb, reference, target=2).sum(-1).detach().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert (ours[IDS == 0] == 0).all()  # a padded token: masked in both passes
    assert float(np.abs(np.asarray(delta)).max()) < 1e-5
