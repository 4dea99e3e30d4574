"""Old files as written: an early onnx release's backend test data, against its stored outputs.

    python benchmarks/legacy_backend_data.py [--version 1.2.2] [--show-ok]

onnx's source distributions from 2018 ship the backend test data of their time: node tests at
opset 7 and the `pytorch-converted`/`pytorch-operator` models PyTorch 0.3-0.4 exported at opset 6
(legacy broadcasts, ConstantFill initial states, RNNs over Relu), each with its inputs and the
outputs PyTorch or Caffe2 computed. onnxruntime runs nothing below opset 7, so the stored outputs
are the oracle. The sdist is fetched with `pip download --no-binary :all: --no-deps` into the
real-exports cache (outside the repository); each model is loaded, run on its first data set and
compared at rtol 1e-3, atol 1e-4. One row per failure, then the count per opset.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = Path(os.environ.get("ONNX_ATTR_REAL_EXPORTS", Path.home() / ".cache" / "onnx-attr-real-exports"))


def fetch(version: str) -> Path:
    """The backend test data folder of onnx `version`'s sdist, downloaded and unpacked once."""
    folder = CACHE / "sdists" / f"onnx-{version}"
    data = folder / f"onnx-{version}" / "onnx" / "backend" / "test" / "data"
    if data.is_dir():
        return data
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                    "-d", str(folder), f"onnx=={version}"], check=True)
    with tarfile.open(folder / f"onnx-{version}.tar.gz") as archive:
        members = [m for m in archive.getmembers() if "/backend/test/data/" in m.name and (m.isfile() or m.isdir())]
        archive.extractall(folder, members=members, filter="data")
    return data


def _tensors(folder: Path, prefix: str) -> list:
    """The stored tensors, bfloat16 ones as torch tensors (numpy has no bfloat16; their bits come back
    as uint16)."""
    import onnx
    from onnx import numpy_helper

    files = sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
    found = []
    for f in files:
        proto = onnx.load_tensor(str(f))
        value = numpy_helper.to_array(proto)
        found.append(_bfloat16(value) if proto.data_type == onnx.TensorProto.BFLOAT16 else value)
    return found


def _bfloat16(bits: np.ndarray):
    """bfloat16 values from their 16 bits (onnx before 1.11 stored them as uint16 tensors)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(bits).view(np.int16)).view(torch.bfloat16)


def _as_declared(values: list, infos) -> list:
    """Each stored value read as its declared element type where the file stored bfloat16 as uint16."""
    import onnx

    return [_bfloat16(v) if isinstance(v, np.ndarray) and v.dtype == np.uint16
            and info.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16 else v for v, info in zip(values, infos)]


def _numpy(value) -> np.ndarray:
    """float64 numpy of a tensor or array (bfloat16 through float32)."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy().astype(np.float64)
    return np.asarray(value).astype(np.float64)


def check(model_path: Path) -> tuple[int, str]:
    """(the file's ai.onnx opset, "ok" or what went wrong)."""
    import onnx

    import onnx_attr

    model = onnx.load(str(model_path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    sets = sorted(model_path.parent.glob("test_data_set_*"))
    if not sets:
        return opset, "no data"
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    names = [i.name for i in inputs]
    try:
        feeds = _as_declared(_tensors(sets[0], "input"), inputs)
        stored = _as_declared(_tensors(sets[0], "output"), model.graph.output)
    except Exception as err:  # noqa: BLE001 - numpy cannot hold the data (strings of raw bytes)
        return opset, f"no data numpy can read ({type(err).__name__})"
    try:
        imported = onnx_attr.load(str(model_path), strip_final_activation=False)
        got = imported.run(dict(zip(names, feeds)))
        got = got if isinstance(got, (list, tuple)) else [got]
        for ours, want in zip(got, stored):
            ours, want = _numpy(ours), _numpy(want)
            if ours.shape != want.shape and ours.size == want.size:
                ours = ours.reshape(want.shape)  # a scalar stored as [1], as early exporters did
            if ours.shape != want.shape:
                return opset, f"WRONG shape {list(ours.shape)} vs {list(want.shape)}"
            if not np.allclose(ours, want, rtol=1e-3, atol=1e-4, equal_nan=True):
                return opset, f"WRONG max abs error {np.abs(ours - want).max():.3g}"
    except Exception as err:  # noqa: BLE001 - the row says what it was
        return opset, f"ERROR {type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return opset, "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1.2.2", help="the onnx release whose test data to run")
    parser.add_argument("--show-ok", action="store_true", help="print the passing rows too")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    data = fetch(args.version)
    counts: collections.Counter = collections.Counter()
    for path in sorted(data.rglob("model.onnx")):
        opset, status = check(path)
        if status.startswith("no data"):
            if args.show_ok:
                print(f"{path.parent.relative_to(data)} (opset {opset}): skipped, {status}")
            continue
        counts[(opset, status == "ok")] += 1
        if status != "ok" or args.show_ok:
            print(f"{path.parent.relative_to(data)} (opset {opset}): {status}")
    total = sum(counts.values())
    passed = sum(n for (_, ok), n in counts.items() if ok)
    print(f"\nonnx {args.version} backend test data: {passed} of {total} match their stored outputs")
    for opset in sorted({o for o, _ in counts}):
        print(f"  opset {opset}: {counts[(opset, True)]} of {counts[(opset, True)] + counts[(opset, False)]}")


if __name__ == "__main__":
    main()
