"""Ops of graphs exported for training, against independent oracles: torch's own batch_norm in
training mode and torch.optim's Adagrad, SGD (standard and Nesterov momentum) and Adam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

import onnx_attr
from conftest import FLOAT, INT64, make_model
from onnx_attr.errors import UnsupportedOpError

RNG = np.random.default_rng(3)
TRAINING = "ai.onnx.preview.training"


def test_batchnorm_training_mode_matches_torch():
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"],
                            training_mode=1, momentum=0.8, epsilon=1e-3)
    stats = {"s": RNG.uniform(0.5, 2, 3), "b": RNG.standard_normal(3), "m": RNG.standard_normal(3),
             "v": RNG.uniform(0.5, 2, 3)}
    stats = {k: v.astype(np.float32) for k, v in stats.items()}
    proto = make_model([node], [("x", FLOAT, [4, 3, 5])], [("y", FLOAT, [4, 3, 5]), ("rm", FLOAT, [3]),
                                                         ("rv", FLOAT, [3])], initializers=stats, opset=15)
    x = RNG.standard_normal((4, 3, 5)).astype(np.float32)
    y, rm, rv = onnx_attr.load(proto, strip_final_activation=False).run({"x": x})
    running_mean, running_var = torch.tensor(stats["m"]), torch.tensor(stats["v"])
    expected = torch.nn.functional.batch_norm(torch.tensor(x), running_mean, running_var, torch.tensor(stats["s"]),
                                              torch.tensor(stats["b"]), training=True, momentum=0.2, eps=1e-3)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(rm, running_mean)
    # torch keeps the unbiased variance as its running estimate, ONNX the population one
    population = torch.tensor(x).var((0, 2), unbiased=False)
    torch.testing.assert_close(rv, torch.tensor(stats["v"]) * 0.8 + population * 0.2)
    with pytest.raises(UnsupportedOpError, match="BatchNormalization"):
        onnx_attr.DeepLift(onnx_attr.load(proto, strip_final_activation=False)).attribute(x, target=(0, 0))


def _optimizer_model(op, n_state, attrs, shapes):
    names = [f"{role}{i}" for role in ["x", "g"] + [f"s{k}" for k in range(n_state)] for i in range(len(shapes))]
    outputs = [f"new_{role}{i}" for role in ["x"] + [f"s{k}" for k in range(n_state)] for i in range(len(shapes))]
    node = helper.make_node(op, ["r", "t", *names], outputs, domain=TRAINING, **attrs)
    shape_of = {n: shapes[int(n[-1])] for n in names + outputs}
    return make_model([node], [("r", FLOAT, []), ("t", INT64, []), *((n, FLOAT, shape_of[n]) for n in names)],
                      [(n, FLOAT, shape_of[n]) for n in outputs], opset=17, domains=[(TRAINING, 1)]), names


def _run_torch(optimizer_cls, kwargs, xs, gs, steps, done=0):
    """`steps` steps of a torch optimizer with a fixed gradient, its step count starting at `done`."""
    params = [torch.nn.Parameter(torch.tensor(x)) for x in xs]
    opt = optimizer_cls(params, **kwargs)
    for p, g in zip(params, gs):
        p.grad = torch.tensor(g)
        if done:
            opt.state[p]["step"].fill_(done)
    for _ in range(steps):
        opt.step()
    return params, opt


@pytest.mark.parametrize("mode,beta", [("standard", 0.7), ("nesterov", 1.0)])
def test_momentum_matches_torch_sgd(mode, beta):
    """Two steps (T = 0 then 1), two tensors; ONNX's beta is torch's 1 - dampening."""
    shapes = [(3,), (2, 2)]
    proto, names = _optimizer_model("Momentum", 1, {"alpha": 0.9, "beta": beta, "norm_coefficient": 0.01, "mode": mode},
                                    shapes)
    xs = [RNG.standard_normal(s).astype(np.float32) for s in shapes]
    gs = [RNG.standard_normal(s).astype(np.float32) for s in shapes]
    model = onnx_attr.load(proto, strip_final_activation=False)
    feeds = {"r": np.array(0.1, np.float32), "t": np.array(0, np.int64)}
    feeds.update(zip(names, xs + gs + [np.zeros(s, np.float32) for s in shapes]))
    first = model.run(feeds)
    params, _ = _run_torch(torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=1 - beta, weight_decay=0.01,
                                                 nesterov=mode == "nesterov"), xs, gs, 1)
    for got, p in zip(first[:2], params):
        torch.testing.assert_close(got, p.detach())
    feeds.update({"t": np.array(1, np.int64), "x0": first[0].numpy(), "x1": first[1].numpy(),
                  "s00": first[2].numpy(), "s01": first[3].numpy()})
    second = model.run(feeds)
    params, _ = _run_torch(torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=1 - beta, weight_decay=0.01,
                                                 nesterov=mode == "nesterov"), xs, gs, 2)
    for got, p in zip(second[:2], params):
        torch.testing.assert_close(got, p.detach())


def test_adagrad_and_adam_match_torch_optim():
    shape = [(4,)]
    x, g = RNG.standard_normal(4).astype(np.float32), RNG.standard_normal(4).astype(np.float32)
    proto, names = _optimizer_model("Adagrad", 1, {"decay_factor": 0.1, "epsilon": 1e-8, "norm_coefficient": 0.05},
                                    shape)
    feeds = {"r": np.array(0.3, np.float32), "t": np.array(2, np.int64), "x0": x, "g0": g,
             "s00": np.full(4, 0.5, np.float32)}
    new_x, new_h = onnx_attr.load(proto, strip_final_activation=False).run(feeds)
    # torch's step count is ONNX's T + 1 once incremented, so T = 2 is torch's third step
    params, opt = _run_torch(torch.optim.Adagrad, dict(lr=0.3, lr_decay=0.1, eps=1e-8, weight_decay=0.05,
                                                       initial_accumulator_value=0.5), [x], [g], 1, done=2)
    torch.testing.assert_close(new_x, params[0].detach())
    torch.testing.assert_close(new_h, opt.state[params[0]]["sum"])

    proto, names = _optimizer_model("Adam", 2, {"alpha": 0.8, "beta": 0.95, "epsilon": 1e-12}, shape)
    feeds = {"r": np.array(0.05, np.float32), "t": np.array(1, np.int64), "x0": x, "g0": g,
             "s00": np.zeros(4, np.float32), "s10": np.zeros(4, np.float32)}
    new_x, new_v, new_h = onnx_attr.load(proto, strip_final_activation=False).run(feeds)
    params, opt = _run_torch(torch.optim.Adam, dict(lr=0.05, betas=(0.8, 0.95), eps=1e-12), [x], [g], 1)
    torch.testing.assert_close(new_x, params[0].detach())
    torch.testing.assert_close(new_v, opt.state[params[0]]["exp_avg"])
    torch.testing.assert_close(new_h, opt.state[params[0]]["exp_avg_sq"])
