"""The attribution job unattended: results never mixed or lost, hostile input files refused clearly.

Each test is one finding of issues 17 and 19; the oracles are the results of a clean run with the
settings asked for, and the files' own bytes.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile

import numpy as np
import pytest

from onnx_attr.app.cli import main
from onnx_attr.errors import InputError, OutputError
from onnx_attr.fileio import FolderLock
from onnx_attr.importing.input_files import InputCastWarning, read_arrays

from conftest import SAMPLES

DIGITS = str(SAMPLES / "digits_cnn.onnx")
DIGITS_INPUTS = str(SAMPLES / "digits_cnn_inputs.npz")
CANCER = str(SAMPLES / "breast_cancer_mlp.onnx")
CANCER_INPUTS = str(SAMPLES / "breast_cancer_mlp_inputs.npz")


def _images(n=2, start=0):
    return np.load(DIGITS_INPUTS)["image"][start:start + n]


def _folder(tmp_path, names, n=2):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate(names):
        np.savez(folder / name, image=_images(n, i % 6))
    return folder


def _attribute(inputs, out, *extra):
    return main(["attribute", DIGITS, "--input", str(inputs), "--out", str(out), "--quiet", *extra])


# -- issue 17 #10: different inputs never share a result folder -------------------------------------------------------

def test_inputs_of_one_name_in_two_subfolders_are_two_entries_of_the_index(tmp_path):
    """a/x.npz and b/x.npz: both were computed into their own folders, but index.json keyed results by the
    bare file name, so one entry held the other's folder and the summary counted one input (sweep 35)."""
    inputs = tmp_path / "in"
    for sub, seed in (("a", 1), ("b", 2)):
        (inputs / sub).mkdir(parents=True)
        np.savez(inputs / sub / "x.npz", image=_images(1, seed))
    out = tmp_path / "out"
    assert _attribute(inputs / "*" / "x.npz", out, "--target", "4") == 0
    index = json.loads((out / "index.json").read_text())
    assert index["inputs"] == ["a/x.npz", "b/x.npz"] and index["computed"] == ["a/x.npz", "b/x.npz"]
    for name, entry in index["results"].items():  # each entry's folder holds its own input's attributions
        alone = tmp_path / f"alone-{entry['folder']}"
        assert _attribute(inputs / name, alone, "--target", "4") == 0
        np.testing.assert_array_equal(np.load(out / entry["folder"] / "attributions.npz")["image"],
                                      np.load(alone / "attributions.npz")["image"])


def test_inputs_whose_names_differ_only_in_punctuation_get_their_own_folders(tmp_path, capsys):
    inputs = _folder(tmp_path, ["a b.npz", "a_b.npz", "a.b.npz"])
    out = tmp_path / "out"
    assert _attribute(inputs, out, "--target", "4") == 0
    index = json.loads((out / "index.json").read_text())
    folders = {name: entry["folder"] for name, entry in index["results"].items()}
    assert len(set(folders.values())) == 3
    for name, folder in folders.items():  # each folder holds the attributions of its own input
        report = json.loads((out / folder / "report.json").read_text())
        assert report["manifest"]["input"]["file"] == name and report["inputs"].endswith(name)
    # the oracle: each input attributed alone
    for name, folder in folders.items():
        alone = tmp_path / f"alone-{folder}"
        assert _attribute(inputs / name, alone, "--target", "4") == 0
        assert (alone / "attributions.npz").read_bytes() == (out / folder / "attributions.npz").read_bytes()
    # a resume skips each one on its own result, never another input's
    (out / folders["a_b.npz"] / "report.json").unlink()
    assert _attribute(inputs, out, "--target", "4", "--resume") == 0
    index = json.loads((out / "index.json").read_text())
    assert index["computed"] == ["a_b.npz"] and sorted(index["skipped_as_finished"]) == ["a b.npz", "a.b.npz"]


# -- issue 17 #11: one bad input never stops the batch ----------------------------------------------------------------

def test_one_bad_input_among_many_is_an_error_entry_and_the_rest_go_on(tmp_path, capsys):
    inputs = _folder(tmp_path, [f"x{i}.npz" for i in range(4)])
    np.savez(inputs / "x1.npz", image=np.zeros((2, 8, 8), np.float32))  # wrong rank
    (inputs / "x2.npz").write_bytes(b"not a zip")                      # unreadable
    out = tmp_path / "out"
    assert _attribute(inputs, out, "--target", "0") == 4
    index = json.loads((out / "index.json").read_text())
    assert index["computed"] == ["x0.npz", "x3.npz"] and index["failed"] == ["x1.npz", "x2.npz"]
    assert "expects rank 4" in index["results"]["x1.npz"]["error"]
    assert "cannot read" in index["results"]["x2.npz"]["error"]
    assert "failed: x1.npz" in capsys.readouterr().out
    np.savez(inputs / "x1.npz", image=_images(2, 1))  # fixed: the resume does it and only it... and x2 fails again
    assert _attribute(inputs, out, "--target", "0", "--resume") == 4
    index = json.loads((out / "index.json").read_text())
    assert index["computed"] == ["x1.npz"] and index["failed"] == ["x2.npz"]
    assert sorted(index["skipped_as_finished"]) == ["x0.npz", "x3.npz"]


# -- issue 17 #12: concurrent runs into one --out never mix ------------------------------------------------------------

def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out):  # another run holds the folder
        assert _attribute(DIGITS_INPUTS, out, "--target", "1") == 2
    assert "another onnx-attr run is writing into" in capsys.readouterr().err
    assert not (out / "report.json").exists()
    assert _attribute(DIGITS_INPUTS, out, "--target", "1") == 0  # released: the next run goes


def test_two_processes_into_one_out_never_mix(tmp_path):
    """Issue 17 #12 as it happened: two runs with different targets started together into one --out.
    One holds the folder and the other is refused (or, if one ends before the other starts, the
    later redoes every result): every folder ends with one run's attributions and its own report."""
    import subprocess
    import sys

    from onnx_attr.app.attribute_job import result_state

    inputs = _folder(tmp_path, [f"x{i}.npz" for i in range(12)])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "onnx_attr.app.cli", "attribute", DIGITS, "-i", str(inputs), "-o", str(out),
               "--batch-size", "1"]
    runs = {t: subprocess.Popen([*command, "--target", str(t)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True) for t in (1, 2)}
    codes = {t: p.wait() for t, p in runs.items()}
    errors = {t: p.stderr.read() for t, p in runs.items()}
    assert sorted(codes.values()) in ([0, 2], [0, 0]), errors
    for t, code in codes.items():
        if code == 2:
            assert "another onnx-attr run is writing into" in errors[t]
    targets = set()
    for i in range(12):
        folder = out / f"x{i}.npz"
        report = json.loads((folder / "report.json").read_text())
        targets.add(report["target"])
        manifest = {k: v for k, v in report["manifest"].items() if k != "input"}
        assert result_state(folder, manifest, report["manifest"]["input"]["sha256"])[0] == "finished"
    assert len(targets) == 1 and codes[targets.pop()] == 0  # all from one run, one that succeeded


def test_a_result_whose_files_come_from_different_runs_is_never_finished(tmp_path, capsys):
    inputs = _folder(tmp_path, ["a.npz", "b.npz"])
    out = tmp_path / "out"
    assert _attribute(inputs, out, "--target", "1") == 0
    good = (out / "a.npz" / "attributions.npz").read_bytes()
    # another run's attributions beside this run's report (the pairing issue 17 saw)
    (out / "a.npz" / "attributions.npz").write_bytes((out / "b.npz" / "attributions.npz").read_bytes())
    assert _attribute(inputs, out, "--target", "1", "--resume") == 0
    index = json.loads((out / "index.json").read_text())
    assert index["computed"] == ["a.npz"]
    assert (out / "a.npz" / "attributions.npz").read_bytes() == good


def test_leftover_temporaries_are_cleaned_by_the_next_run(tmp_path, capsys):
    inputs = _folder(tmp_path, ["a.npz"])
    out = tmp_path / "out"
    (out / "a.npz").mkdir(parents=True)
    for stale in (out / ".index.tmp-1234.json", out / "a.npz" / ".attributions.tmp-dead.npz"):
        stale.write_bytes(b"half")
    assert _attribute(inputs / "a.npz", out / "a.npz", "--target", "1") == 0  # a one-file run cleans its folder
    assert not (out / "a.npz" / ".attributions.tmp-dead.npz").exists()
    assert _attribute(inputs, out, "--target", "1") == 0
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


# -- issue 19 §3: resume with other settings is refused; a changed input is redone ------------------------------------

@pytest.mark.parametrize("changed,named", [
    (["--method", "integratedgradients"], "method: 'deeplift' -> 'integratedgradients'"),
    (["--target", "5"], "target: '3' -> '5'"),
    (["--baseline", "mean"], "baseline.spec: 'auto' -> 'mean'"),
    (["--keep-final-activation"], "options.stripped_final_activations"),
])
def test_resume_with_other_settings_is_refused_and_nothing_is_mixed(tmp_path, capsys, changed, named):
    inputs = _folder(tmp_path, ["a.npz", "b.npz"])
    out = tmp_path / "out"
    assert _attribute(inputs, out, "--target", "3") == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    args = ["--target", "3", *changed] if changed[0] != "--target" else changed
    assert _attribute(inputs, out, *args, "--resume") == 2
    err = capsys.readouterr().err
    assert "made with other settings" in err and named in err and "drop --resume" in err
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert after == before  # refused before anything was written, index.json included
    reports = [json.loads((out / n / "report.json").read_text()) for n in ("a.npz", "b.npz")]
    assert all(r["method"] == "DeepLift" and r["target"] == 3 for r in reports)


def test_resume_with_another_model_is_refused(tmp_path, capsys):
    import shutil

    model = tmp_path / "m.onnx"
    shutil.copy(DIGITS, model)
    inputs = _folder(tmp_path, ["a.npz"])
    out = tmp_path / "out"
    common = ["attribute", str(model), "--input", str(inputs), "--out", str(out), "--target", "1", "--quiet"]
    assert main(common) == 0
    import onnx

    proto = onnx.load(model)
    proto.producer_version = "retrained"
    onnx.save(proto, model)
    assert main([*common, "--resume"]) == 2
    assert "model_sha256" in capsys.readouterr().err


def test_resume_redoes_a_result_whose_input_file_changed(tmp_path, capsys):
    inputs = _folder(tmp_path, ["a.npz", "b.npz"])
    out = tmp_path / "out"
    assert _attribute(inputs, out, "--target", "3") == 0
    np.savez(inputs / "a.npz", image=_images(2, 5))
    assert _attribute(inputs, out, "--target", "3", "--resume") == 0
    index = json.loads((out / "index.json").read_text())
    assert index["computed"] == ["a.npz"] and index["results"]["a.npz"]["status"] == "redone: input changed"
    alone = tmp_path / "alone"
    assert _attribute(inputs / "a.npz", alone, "--target", "3") == 0
    assert (alone / "attributions.npz").read_bytes() == (out / "a.npz" / "attributions.npz").read_bytes()


def test_manifest_differences_name_each_setting():
    from onnx_attr.app.manifest import build_manifest, differences

    a = build_manifest(model_sha256="m", method="deeplift", target=None, baseline="zeros",
                       options={"batch_size": 16}, library_versions={"torch": "2.14.1"})
    b = build_manifest(model_sha256="m", method="deeplift", target=None, baseline="b.npz", baseline_sha256="f00",
                       options={"batch_size": 8}, library_versions={"torch": "2.15.0"})
    assert differences(a, a) == []
    assert differences(a, b) == ["baseline.sha256: '<unset>' -> 'f00'", "baseline.spec: 'zeros' -> 'b.npz'",
                                 "options.batch_size: 16 -> 8", "versions.torch: '2.14.1' -> '2.15.0'"]
    assert differences(a, b, ignore=("versions", "baseline", "options")) == []
    assert differences(None, a)[0].startswith("manifest: none recorded")


# -- issue 17: hostile input files ------------------------------------------------------------------------------------

def _npy_header(shape, dtype="<f4") -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_npz_whose_header_claims_4_tib_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("image.npy", _npy_header((2**40,)) + b"\0" * 64)
    with pytest.raises(InputError, match="more than the .* allowed"):
        read_arrays(path)


def test_npz_member_holding_less_than_its_header_says_is_refused(tmp_path):
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("image.npy", _npy_header((1000,)) + b"\0" * 64)
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_arrays(path)


def test_zip_bomb_is_refused_from_its_declared_size(tmp_path):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, image=np.zeros((1, 1, 1024, 1024), np.float32))  # 4 MiB in, a few KiB on disk
    assert path.stat().st_size < 100_000
    with pytest.raises(InputError, match="expands to 4,194,.* bytes, more than the 1,000,000 allowed"):
        read_arrays(path, budget=1_000_000)
    assert read_arrays(path)["image"].shape == (1, 1, 1024, 1024)  # within the default budget


def test_npy_input_is_accepted_for_a_one_input_model(tmp_path, capsys):
    path = tmp_path / "x.npy"
    np.save(path, _images(3))
    out = tmp_path / "out"
    assert _attribute(path, out, "--target", "2") == 0
    with np.load(out / "attributions.npz") as data:
        assert data["image"].shape == (3, 1, 8, 8)


def test_fifo_as_input_or_names_file_is_refused_without_hanging(tmp_path, capsys):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    assert _attribute(fifo, tmp_path / "out") == 2
    assert "is a FIFO, not a regular file" in capsys.readouterr().err
    assert main(["attribute", CANCER, "-i", CANCER_INPUTS, "-o", str(tmp_path / "o2"), "--plot",
                 "--feature-names", str(fifo)]) == 2
    assert "is a FIFO" in capsys.readouterr().err


@pytest.mark.parametrize("content,message", [
    ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
    (json.dumps(["x" * 5_000_000]), "more than the 1000 allowed"),
])
def test_hostile_feature_name_files_are_refused_clearly(tmp_path, capsys, content, message):
    names = tmp_path / "names.json"
    names.write_text(content)
    assert main(["attribute", CANCER, "-i", CANCER_INPUTS, "-o", str(tmp_path / "out"), "--plot",
                 "--feature-names", str(names)]) == 2
    assert message in capsys.readouterr().err


def test_npz_key_that_names_no_input_is_an_error(tmp_path, capsys):
    path = tmp_path / "x.npz"
    np.savez(path, img=_images(2))
    assert _attribute(path, tmp_path / "out") == 2
    assert "['img'] that name no input of the model; its inputs are ['image']" in capsys.readouterr().err


def test_float64_input_is_converted_with_a_warning(tmp_path, capsys):
    path = tmp_path / "x.npz"
    np.savez(path, image=_images(2).astype(np.float64))
    out = tmp_path / "out"
    with pytest.warns(InputCastWarning, match="'image' .* is float64; the model takes float32"):
        assert _attribute(path, out, "--target", "1") == 0
    report = json.loads((out / "report.json").read_text())
    assert "is float64" in report["input_warnings"][0]


# -- issue 19 §6: small truths ---------------------------------------------------------------------------------------

def test_result_files_honour_the_umask(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert _attribute(DIGITS_INPUTS, tmp_path / "out", "--target", "1") == 0
    finally:
        os.umask(old)
    for name in ("attributions.npz", "report.json", "heatmap_image_0.png"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o644


def test_negative_target_counts_from_the_end_as_in_numpy(tmp_path, capsys):
    assert _attribute(DIGITS_INPUTS, tmp_path / "neg", "--target=-1") == 0
    assert _attribute(DIGITS_INPUTS, tmp_path / "pos", "--target", "9") == 0
    assert (tmp_path / "neg" / "attributions.npz").read_bytes() == (tmp_path / "pos" / "attributions.npz").read_bytes()
    assert json.loads((tmp_path / "neg" / "report.json").read_text())["target"] == 9


def test_summary_is_short_and_names_the_method_right(tmp_path, capsys):
    x = np.concatenate([_images(8)] * 8)  # 64 examples
    path = tmp_path / "x.npz"
    np.savez(path, image=x)
    assert _attribute(path, tmp_path / "out", "--method", "revealcancel") == 0
    out = capsys.readouterr().out
    assert out.startswith("DeepLift (RevealCancel rule) on output")
    assert "(64 in all)" in out and "and 64 picture(s)" in out
    assert max(len(line) for line in out.splitlines()) < 200
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["target"]) == 64 and report["passes"] == 4  # 16 examples per pass by default


def test_batches_give_the_same_attributions_as_one_pass(tmp_path, capsys):
    x = np.concatenate([_images(8)] * 3)
    path = tmp_path / "x.npz"
    np.savez(path, image=x * 255)  # pixels at the scale of real images
    for size in ("5", "24"):
        assert _attribute(path, tmp_path / size, "--target", "7", "--baseline", "mean", "--batch-size", size) == 0
    with np.load(tmp_path / "5" / "attributions.npz") as a, np.load(tmp_path / "24" / "attributions.npz") as b:
        np.testing.assert_allclose(a["image"], b["image"], rtol=1e-5, atol=1e-4)
    deltas = json.loads((tmp_path / "5" / "report.json").read_text())["convergence_delta"]
    assert len(deltas) == 24


def test_sigmoid_model_summary_says_what_is_explained(tmp_path, capsys):
    assert main(["attribute", CANCER, "-i", CANCER_INPUTS, "-o", str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "target None" not in out and "target none needed (default for one value per example: the output itself" in out


# -- issue 19 §2: progress on stderr, on a terminal only ---------------------------------------------------------------

def test_progress_shows_examples_done_on_a_terminal_and_nothing_otherwise(tmp_path, capsys, monkeypatch):
    from onnx_attr import progress

    x = np.concatenate([_images(8)] * 4)
    path = tmp_path / "x.npz"
    np.savez(path, image=x)
    assert main(["attribute", DIGITS, "-i", str(path), "-o", str(tmp_path / "a"), "--batch-size", "8"]) == 0
    assert capsys.readouterr().err == ""  # not a terminal: quiet
    monkeypatch.setattr(progress, "_is_terminal", lambda: True)
    assert main(["attribute", DIGITS, "-i", str(path), "-o", str(tmp_path / "b"), "--batch-size", "8"]) == 0
    err = capsys.readouterr().err
    assert "/32 [" in err and "example/s" in err  # examples done of 32, with the rate
    assert main(["attribute", DIGITS, "-i", str(path), "-o", str(tmp_path / "c"), "--batch-size", "8", "-q"]) == 0
    assert capsys.readouterr().err == ""
    inputs = _folder(tmp_path, ["p.npz", "q.npz"])
    assert main(["attribute", DIGITS, "-i", str(inputs), "-o", str(tmp_path / "d")]) == 0
    assert "2/2" in capsys.readouterr().err


def test_perturbation_methods_take_captums_show_progress(capsys, monkeypatch):
    import onnx_attr
    from onnx_attr import progress

    monkeypatch.setattr(progress, "_is_terminal", lambda: True)
    model = onnx_attr.load(CANCER)
    x = np.load(CANCER_INPUTS)[next(iter(np.load(CANCER_INPUTS).files))][:4]
    quiet = onnx_attr.FeatureAblation(model).attribute(x, perturbations_per_eval=10)
    shown = onnx_attr.FeatureAblation(model).attribute(x, perturbations_per_eval=10, show_progress=True)
    np.testing.assert_array_equal(quiet, shown)
    assert "FeatureAblation" in capsys.readouterr().err  # 30 features / 10 per pass: 3 passes
    onnx_attr.Occlusion(model).attribute(x, sliding_window_shapes=(5,), strides=(5,), show_progress=True)
    assert "Occlusion" in capsys.readouterr().err
