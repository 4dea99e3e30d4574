"""The same attributions on a CUDA device as on the CPU (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

import onnx_attr
from onnx_attr.importing.inputs import read_npz

from conftest import SAMPLES


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["digits_cnn", "breast_cancer_mlp"])
def test_cuda_matches_cpu(name):
    cpu = onnx_attr.load(SAMPLES / f"{name}.onnx")
    gpu = onnx_attr.load(SAMPLES / f"{name}.onnx", device="cuda")
    x = read_npz(SAMPLES / f"{name}_inputs.npz", cpu.inputs)
    target = 1 if name == "digits_cnn" else None
    a_cpu, d_cpu = onnx_attr.DeepLift(cpu).attribute(x, target=target, return_convergence_delta=True)
    a_gpu, d_gpu = onnx_attr.DeepLift(gpu).attribute(x, target=target, return_convergence_delta=True)
    for key in a_cpu:
        torch.testing.assert_close(torch.as_tensor(a_gpu[key]), torch.as_tensor(a_cpu[key]), atol=1e-4, rtol=1e-3)
    assert d_gpu.abs().max() < 1e-3
    assert gpu.verify(x).passed


@pytest.mark.cuda
def test_cuda_deeplift_shap_matches_cpu():
    """Both DeepLiftShap layouts (rows in one pass; one pass per row, references cached)."""
    cpu = onnx_attr.load(SAMPLES / "digits_cnn.onnx")
    gpu = onnx_attr.load(SAMPLES / "digits_cnn.onnx", device="cuda")
    x = read_npz(SAMPLES / "digits_cnn_inputs.npz", cpu.inputs)
    key = next(iter(x))
    background = {key: x[key][:3] * 0.5}
    expected = onnx_attr.DeepLiftShap(cpu).attribute(x, background, target=1)
    for rows_per_pass in (1, 3):
        shap = onnx_attr.DeepLiftShap(gpu)
        shap.SHARED_PASS_ELEMENTS = rows_per_pass * x[key][0].size * len(x[key])
        for _ in range(2):  # the second call from the cached references
            found, delta = shap.attribute(x, background, target=1, return_convergence_delta=True)
            torch.testing.assert_close(torch.as_tensor(found[key]), torch.as_tensor(expected[key]),
                                       atol=1e-4, rtol=1e-3)
            assert delta.abs().max() < 1e-3
