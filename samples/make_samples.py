"""Regenerate the bundled sample models and inputs from scratch.

    python samples/make_samples.py        # needs the test extras (scikit-learn, onnxscript)

Trains two small models on data that scikit-learn ships (no downloads), with fixed seeds, and
exports them with `torch.onnx.export` at opset 18 with a dynamic batch axis:

* digits_cnn.onnx: a CNN on `load_digits` (8x8 images), softmax head, input "image" [batch, 1, 8, 8].
* breast_cancer_mlp.onnx: an MLP on `load_breast_cancer` (30 raw features, standardisation baked
  into the graph), sigmoid head, input "features" [batch, 30].

Beside each model: an .npz of held-out inputs keyed by the ONNX input name, and a JSON file with
the labels of those inputs and the held-out accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
OPSET = 18


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, image):
        return torch.softmax(self.classifier(self.features(image)), dim=1)


class CancerMLP(nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.net = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, features):
        return torch.sigmoid(self.net((features - self.mean) / self.std))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, epochs: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            loss_fn(model, x[idx], y[idx]).backward()
            opt.step()


def export(model: nn.Module, example: torch.Tensor, name: str, input_name: str, output_name: str) -> Path:
    path = HERE / f"{name}.onnx"
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(model, (example,), input_names=[input_name], output_names=[output_name],
                                dynamic_shapes={input_name: {0: batch}}, opset_version=OPSET, dynamo=True)
    program.save(str(path))
    return path


def save_inputs(name: str, input_name: str, x: np.ndarray, labels: np.ndarray, accuracy: float,
                feature_names: list[str] | None = None) -> None:
    np.savez(HERE / f"{name}_inputs.npz", **{input_name: x.astype(np.float32)})
    meta = {"labels": labels.tolist(), "held_out_accuracy": round(accuracy, 4)}
    if feature_names is not None:  # for `onnx-attr attribute --plot --feature-names`
        meta["feature_names"] = feature_names
    (HERE / f"{name}_inputs.json").write_text(json.dumps(meta, indent=2) + "\n")


def make_digits() -> None:
    torch.manual_seed(0)
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.25, random_state=0, stratify=data.target)
    model = DigitsCNN()
    nll = lambda m, xb, yb: nn.functional.nll_loss(torch.log(m(xb) + 1e-9), yb)  # noqa: E731
    train(model, torch.from_numpy(x_tr), torch.from_numpy(y_tr), nll, epochs=40)
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    export(model, torch.from_numpy(x_te[:2]), "digits_cnn", "image", "probabilities")
    save_inputs("digits_cnn", "image", x_te[:8], y_te[:8], acc)
    print(f"digits_cnn: held-out accuracy {acc:.3f}")


def make_cancer() -> None:
    torch.manual_seed(0)
    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, data.target, test_size=0.25, random_state=0, stratify=data.target)
    model = CancerMLP(x_tr.mean(0), x_tr.std(0) + 1e-6)
    bce = lambda m, xb, yb: nn.functional.binary_cross_entropy(m(xb)[:, 0], yb.float())  # noqa: E731
    train(model, torch.from_numpy(x_tr), torch.from_numpy(y_tr), bce, epochs=60)
    model.eval()
    with torch.no_grad():
        acc = float(((model(torch.from_numpy(x_te))[:, 0] > 0.5).numpy() == y_te).mean())
    export(model, torch.from_numpy(x_te[:2]), "breast_cancer_mlp", "features", "probability")
    save_inputs("breast_cancer_mlp", "features", x_te[:8], y_te[:8], acc, [str(n) for n in data.feature_names])
    print(f"breast_cancer_mlp: held-out accuracy {acc:.3f}")


if __name__ == "__main__":
    make_digits()
    make_cancer()
