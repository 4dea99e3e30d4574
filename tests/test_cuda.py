"""The same attributions on a CUDA device as on the CPU (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

import onnx_attr
from onnx_attr.inputs import read_npz

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
