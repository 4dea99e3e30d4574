"""The dataset job: every row once, equal to the per-file job, error rows, kill + resume, refusals.

Oracles: onnxruntime (completeness: the attributions of a row add up to f(x) - f(0) at the
target, computed by onnxruntime on the .onnx file), the `attribute` job on the same rows, and the
shard files' inodes and mtimes across a SIGKILL and a resume.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLES

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from onnx_attr import InputError, OutputError, load  # noqa: E402
from onnx_attr.app.dataset_job import (attribute_dataset, attribution_array, commit_shard,  # noqa: E402
                                   manifest_hash, read_results, shard_name)

ROOT = Path(__file__).resolve().parent.parent
MLP = SAMPLES / "breast_cancer_mlp.onnx"
CNN = SAMPLES / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def mlp():
    return load(MLP)


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    return np.load(SAMPLES / "breast_cancer_mlp_inputs.npz")["features"]


def _ort_logits(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    """onnxruntime on the .onnx file with its final Sigmoid/Softmax cut off: the logits."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    last = proto.graph.node[-1]
    assert last.op_type in ("Sigmoid", "Softmax") and last.output[0] == proto.graph.output[0].name
    proto.graph.output[0].name = last.input[0]
    proto.graph.node.remove(last)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {name: x})[0]


def _attributions(table, column: str = "attributions") -> np.ndarray:
    return attribution_array(table, column)


def test_rows_match_the_attribute_job_and_onnxruntime(tmp_path, mlp, features):
    """Two .npz sources cut into shards across the file boundary: every row once, in order, equal
    to `onnx-attr attribute` on the same file, and complete against onnxruntime's logits."""
    from onnx_attr.app.attribute_job import run_attribute

    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "a.npz", features=features[:5])
    np.savez(data / "b.npz", features=features[5:])
    summary = attribute_dataset(mlp, str(data), str(tmp_path / "out"), shard_rows=2, batch_size=3, quiet=True)
    assert (summary["rows"], summary["shards"], summary["error_rows_computed"]) == (8, 5, 0)
    table = read_results(tmp_path / "out")
    assert table.column("row_id").to_pylist() == list(range(8))
    assert table.column("source").to_pylist() == ["a.npz"] * 5 + ["b.npz"] * 3
    assert table.column("source_row").to_pylist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert set(table.column("status").to_pylist()) == {"ok"}
    got = _attributions(table)
    assert got.dtype == np.float32 and got.shape == (8, 30)

    for name, rows in (("a.npz", slice(0, 5)), ("b.npz", slice(5, 8))):
        run_attribute(mlp, input_path=str(data / name), target=None, baseline=None, method="deeplift",
                      output_name=None, out=str(tmp_path / name), quiet=True)
        expected = np.load(tmp_path / name / "attributions.npz")["features"]
        np.testing.assert_allclose(got[rows], expected, rtol=1e-6, atol=1e-6)

    logits = _ort_logits(MLP, "features", features)
    reference = _ort_logits(MLP, "features", np.zeros_like(features))
    # one logit per row: no class to predict, the output itself is explained
    assert table.column("target").null_count == 8 and table.column("prediction").null_count == 8
    np.testing.assert_allclose(table.column("output").to_pylist(), logits[:, 0], rtol=1e-5, atol=1e-4)
    change = logits[:, 0] - reference[:, 0]
    assert np.abs(change).max() > 10.0  # logits in the tens: not a trivial identity
    np.testing.assert_allclose(got.astype(np.float64).sum(1), change, rtol=1e-4, atol=1e-4)
    assert max(table.column("relative_delta").to_pylist()) <= 1e-4 and summary["rows_above_delta_tolerance"] == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["method"] == "deeplift" and len(manifest["model_sha256"]) == 64
    assert manifest["dataset"]["shards"] == [[0, 0, 2], [0, 2, 4], [0, 4, 5], [1, 0, 2], [1, 2, 3]]


def test_csv_and_parquet_rows_with_bad_rows_become_error_rows(tmp_path, mlp, features):
    """A cell that does not parse (CSV) and a NaN (Parquet) fail their row only; the other rows
    equal the .npz run's. Columns are picked with `columns` (a label column is left out)."""
    names = [f"f{i}" for i in range(30)]
    with open(tmp_path / "rows.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", *names])
        for i, row in enumerate(features):
            cells = [repr(float(v)) for v in row]
            if i == 2:
                cells[7] = "12.5.3"  # corrupt
            writer.writerow([i % 2, *cells])
    bad = features.astype(np.float64).copy()
    bad[4, 3] = np.nan
    pq.write_table(pa.table({"label": list(range(8)), **{n: bad[:, j] for j, n in enumerate(names)}}),
                   tmp_path / "rows.parquet")
    np.savez(tmp_path / "rows.npz", features=features)
    reference = _attributions(read_results(_run(tmp_path / "rows.npz", tmp_path / "npz", mlp)))
    for source, broken, text in (("rows.csv", 2, "does not parse"), ("rows.parquet", 4, "NaN")):
        out = tmp_path / source.replace(".", "_")
        summary = attribute_dataset(mlp, str(tmp_path / source), str(out), columns=names, shard_rows=3, quiet=True)
        assert summary["error_rows_computed"] == 1
        table = read_results(out)
        status = table.column("status").to_pylist()
        assert status[broken] == "error" and status.count("ok") == 7
        assert text in table.column("error").to_pylist()[broken]
        assert table.column("attributions").is_null().to_pylist()[broken]
        got = _attributions(table.filter(pa.compute.equal(table.column("status"), "ok")))
        np.testing.assert_allclose(got, np.delete(reference, broken, axis=0), rtol=1e-5, atol=1e-5)


def test_a_shard_of_error_rows_only_still_gets_its_report(tmp_path, mlp, features):
    """Every row of the first shard fails (cells that do not parse): its rows are error rows, the
    others are explained, and the report is written. (Its per-feature sums met a batch with no ok
    row and stopped the run with an internal error.)"""
    from onnx_attr.app.report_html import ReportOptions

    names = [f"f{i}" for i in range(30)]
    with open(tmp_path / "rows.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for i, row in enumerate(features):
            writer.writerow(["x" if i < 3 else repr(float(v)) for v in row])
    summary = attribute_dataset(mlp, str(tmp_path / "rows.csv"), str(tmp_path / "out"), shard_rows=3, quiet=True,
                                report=ReportOptions(gallery_rows=8, pictures=0))
    assert summary["error_rows_computed"] == 3 and (tmp_path / "out" / "report.html").exists()
    assert read_results(tmp_path / "out").column("status").to_pylist() == ["error"] * 3 + ["ok"] * 5


def test_unreadable_source_is_an_error_row_and_float16_on_request(tmp_path, mlp, features):
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "a.npz", features=features)
    (data / "b.npz").write_bytes(b"PK\x03\x04 not really a zip")
    summary = attribute_dataset(mlp, str(data), str(tmp_path / "out"), attribution_dtype="float16", quiet=True)
    assert (summary["rows"], summary["error_rows_computed"]) == (9, 1)
    table = read_results(tmp_path / "out")
    assert table.column("status").to_pylist() == ["ok"] * 8 + ["error"]
    assert "b.npz" in table.column("error").to_pylist()[8]
    got = _attributions(table)
    assert got.dtype == np.float16 and np.isnan(got[8]).all() and np.isfinite(got[:8]).all()


def _run(source: Path, out: Path, model, **kwargs) -> Path:
    attribute_dataset(model, str(source), str(out), quiet=True, **kwargs)
    return out


def test_resume_refuses_other_settings_and_keeps_committed_shards(tmp_path, mlp, features):
    np.savez(tmp_path / "rows.npz", features=features)
    out = _run(tmp_path / "rows.npz", tmp_path / "out", mlp, shard_rows=4)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.parquet")}
    assert len(before) == 2
    with pytest.raises(OutputError, match="--resume"):
        _run(tmp_path / "rows.npz", out, mlp, shard_rows=4)
    for change, setting in (({"method": "integratedgradients"}, "method"), ({"target": "1"}, "target"),
                            ({"baseline": str(tmp_path / "base.npz")}, "baseline")):
        np.savez(tmp_path / "base.npz", features=features[:1] * 0.5)
        with pytest.raises(InputError, match=rf"(?m)^  {setting}\b.*->"):
            _run(tmp_path / "rows.npz", out, mlp, shard_rows=4, resume=True, **change)
    summary = attribute_dataset(mlp, str(tmp_path / "rows.npz"), str(out), shard_rows=4, resume=True, quiet=True)
    assert (summary["shards_kept"], summary["shards_computed"]) == (2, 0)
    assert before == {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.parquet")}
    # a duplicated task commits the same name again: still one file, each row once
    digest = json.loads((out / "manifest.json").read_text())["hash"]
    commit_shard(out, 0, digest, pq.read_table(out / shard_name(0, digest)))
    assert read_results(out).column("row_id").to_pylist() == list(range(8))
    assert len(list(out.glob("shard-*"))) == 2


def test_manifest_hash_ignores_how_the_run_was_scheduled():
    base = {"method": "deeplift", "execution": {"engine": "local", "batch_size": 64}}
    assert manifest_hash(base) == manifest_hash({**base, "execution": {"engine": "ray", "batch_size": 8}})
    assert manifest_hash(base) != manifest_hash({**base, "method": "integratedgradients"})


#: Runs the CLI with a pause after each shard's commit, so that the test can kill it (or a Ray worker)
#: between shards. The worker class is defined here, in __main__, so that Ray ships it to its workers
#: by value: a patch of the module would stay in the driver.
_SLOW_CLI = """
import os, sys, time
import onnx_attr.app.dataset_job as job
class SlowWorker(job.ShardWorker):
    def run(self, index):
        done = super().run(index)
        time.sleep(float(os.environ.get("PAUSE_AFTER_SHARD", "0.4")))
        return done
job.ShardWorker = SlowWorker
from onnx_attr.app.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_of_the_driver_then_resume_loses_and_repeats_no_row(tmp_path, features, capsys):
    rows = np.concatenate([features] * 6)  # 48 rows, 12 shards of 4
    np.savez(tmp_path / "rows.npz", features=rows)
    out = tmp_path / "out"
    args = ["dataset", str(MLP), "-i", str(tmp_path / "rows.npz"), "-o", str(out), "--shard-rows", "4", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *args], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(out.glob("shard-*.parquet"))) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.parquet")}
    assert 3 <= len(committed) < 12, "the run was not killed midway"
    with pytest.raises(InputError, match="lacks"):
        read_results(out)
    from onnx_attr.app.cli import main

    capsys.readouterr()
    assert main([*args, "--resume", "--json"]) == 0  # the restarted driver (in-process: one start saved)
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards_kept"] == len(committed) and summary["shards_computed"] == 12 - len(committed)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.parquet")}
    assert {k: after[k] for k in committed} == committed  # committed shards untouched
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    table = read_results(out)
    assert table.column("row_id").to_pylist() == list(range(48))
    assert table.column("source_row").to_pylist() == list(range(48))
    got = _attributions(table)
    np.testing.assert_allclose(got[8:16], got[:8], rtol=1e-6, atol=1e-6)  # the same rows, the same results
    change = _ort_logits(MLP, "features", rows)[:, 0] - _ort_logits(MLP, "features", np.zeros_like(rows))[:, 0]
    np.testing.assert_allclose(got.astype(np.float64).sum(1), change, rtol=1e-4, atol=1e-4)


def test_cli_help_lists_both_engines():
    from onnx_attr.app.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["dataset"].format_help()
    assert "--engine" in text and "local" in text and "ray" in text and "--address" in text
    assert "--resume" in text and "--gpus-per-worker" in text


@pytest.mark.slow  # ~100 s on two busy cores: Ray starts embedded and two workers load the model
def test_ray_engine_gives_the_local_engine_rows(tmp_path, mlp, features):
    """2,000 rows on two Ray workers (embedded Ray) equal the local engine's to 1e-6, row for row."""
    pytest.importorskip("ray.data")
    rng = np.random.default_rng(0)
    rows = (np.concatenate([features] * 250) * rng.uniform(0.8, 1.2, (2000, 30))).astype(np.float32)
    np.savez(tmp_path / "rows.npz", features=rows)
    local = attribute_dataset(str(MLP), str(tmp_path / "rows.npz"), str(tmp_path / "local"), shard_rows=250,
                              batch_size=125, quiet=True)
    on_ray = attribute_dataset(str(MLP), str(tmp_path / "rows.npz"), str(tmp_path / "ray"), shard_rows=250,
                               batch_size=125, engine="ray", ray_options={"workers": 2, "cpus_per_worker": 0.5},
                               quiet=True)
    assert local["hash"] == on_ray["hash"] and on_ray["shards_computed"] == 8
    a, b = read_results(tmp_path / "local"), read_results(tmp_path / "ray")
    assert b.column("row_id").to_pylist() == list(range(2000))
    assert set(b.column("status").to_pylist()) == {"ok"}
    np.testing.assert_allclose(_attributions(b), _attributions(a), rtol=0, atol=1e-6)
    assert max(b.column("relative_delta").to_pylist()) <= 1e-4


def test_ray_engine_without_ray_is_a_clear_error(tmp_path, features, monkeypatch):
    np.savez(tmp_path / "rows.npz", features=features)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(InputError, match=r"onnx-attr\[ray\]"):
        attribute_dataset(str(MLP), str(tmp_path / "rows.npz"), str(tmp_path / "out"), engine="ray", quiet=True)


def test_a_cluster_that_asks_for_a_token_is_a_clear_error(tmp_path, features, monkeypatch):
    """Ray wraps its AuthenticationError in a ConnectionError; the message says what to set (the
    exception chain as Ray 2.60 raises it, the cluster's refusal faked)."""
    ray = pytest.importorskip("ray")
    from ray.exceptions import AuthenticationError

    def refused(*args, **kwargs):
        try:
            raise AuthenticationError("RPC error: InvalidAuthToken: Authentication token is missing or incorrect")
        except AuthenticationError as err:
            raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:6379") from err

    monkeypatch.setattr(ray, "init", refused)
    np.savez(tmp_path / "rows.npz", features=features)
    with pytest.raises(InputError, match="RAY_AUTH_MODE=token") as raised:
        attribute_dataset(str(MLP), str(tmp_path / "rows.npz"), str(tmp_path / "out"), engine="ray", quiet=True,
                          ray_options={"address": "127.0.0.1:6379"})
    assert "127.0.0.1:6379" in str(raised.value)
    monkeypatch.setattr(ray, "init", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("no cluster there")))
    with pytest.raises(InputError, match="ray start --head"):
        attribute_dataset(str(MLP), str(tmp_path / "rows.npz"), str(tmp_path / "out"), engine="ray", quiet=True,
                          overwrite=True, ray_options={"address": "127.0.0.1:6379"})


def test_a_baseline_that_does_not_fit_every_row_is_refused_up_front(tmp_path, mlp, features):
    np.savez(tmp_path / "rows.npz", features=features)
    np.savez(tmp_path / "two.npz", features=features[:2])
    with pytest.raises(InputError, match="one row"):
        attribute_dataset(mlp, str(tmp_path / "rows.npz"), str(tmp_path / "out"), baseline=str(tmp_path / "two.npz"))
    assert not (tmp_path / "out").exists()


def _descendants(root: int) -> list[int]:
    """Processes below `root` (from /proc), so that only this test's Ray workers are touched."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found


@pytest.mark.slow  # ~120 s on two busy cores
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the Ray worker through /proc")
def test_a_ray_worker_killed_midway_leaves_every_row_once(tmp_path, features):
    """SIGKILL of a Ray worker actor mid-run: Ray Data retries its task on a new actor, the shard
    is rewritten under the same name, and every row is there once, equal to the local engine's."""
    pytest.importorskip("ray.data")
    rows = np.concatenate([features] * 100)  # 800 rows, 16 shards
    np.savez(tmp_path / "rows.npz", features=rows)
    out = tmp_path / "ray"
    args = ["dataset", str(MLP), "-i", str(tmp_path / "rows.npz"), "-o", str(out), "--shard-rows", "50",
            "--batch-size", "50", "-q", "--engine", "ray", "--workers", "2", "--cpus-per-worker", "0.5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PAUSE_AFTER_SHARD": "1.5"}  # seconds to find a worker in
    driver = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *args], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline, killed = time.monotonic() + 240, None
    while killed is None and time.monotonic() < deadline and driver.poll() is None:
        if len(list(out.glob("shard-*.parquet"))) >= 2:
            for pid in _descendants(driver.pid):
                try:
                    if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::MapWorker"):
                        os.kill(pid, signal.SIGKILL)
                        killed = pid
                        break
                except OSError:
                    continue
        time.sleep(0.05)
    assert driver.wait(timeout=300) == 0
    assert killed is not None, "no Ray worker was killed midway"
    table = read_results(out)
    assert table.column("row_id").to_pylist() == list(range(800))
    assert set(table.column("status").to_pylist()) == {"ok"}
    local = attribute_dataset(str(MLP), str(tmp_path / "rows.npz"), str(tmp_path / "local"), shard_rows=50,
                              batch_size=50, quiet=True)
    assert local["rows"] == 800
    np.testing.assert_allclose(_attributions(table), _attributions(read_results(tmp_path / "local")),
                               rtol=0, atol=1e-6)


# -- the method options of `attribute`, in the dataset job -------------------------------------------------------------

def test_dataset_takes_every_method_option_attribute_takes():
    """The registry's CLI options are one set of flags for both commands."""
    from onnx_attr.app.cli import build_parser
    from onnx_attr.methods.registry import CLI_OPTIONS

    commands = build_parser()._subparsers._group_actions[0].choices
    for command in ("attribute", "dataset"):
        dests = {a.dest for a in commands[command]._actions}
        assert set(CLI_OPTIONS) <= dests, (command, set(CLI_OPTIONS) - dests)


def test_lrp_rule_reaches_every_row_and_a_resume_with_another_is_refused(tmp_path, mlp, features, capsys):
    """`--method lrp --lrp-rule z_plus`: the rows equal the LRP explainer built with that rule (and
    differ from the default epsilon rule, so the option is not dropped on the way); the manifest
    records it, and a resume with another rule or composite is refused, naming it."""
    import torch

    from onnx_attr import LRP
    from onnx_attr.app.cli import main

    rows = np.concatenate([features] * 3) * np.linspace(0.5, 2.0, 24)[:, None].astype(np.float32)
    np.savez(tmp_path / "rows.npz", features=rows)
    out = tmp_path / "out"
    common = ["-q", "dataset", str(MLP), "-i", str(tmp_path / "rows.npz"), "-o", str(out), "--method", "lrp",
              "--shard-rows", "10", "--batch-size", "7", "--no-report"]
    assert main([*common, "--lrp-rule", "z_plus"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["lrp_rule"] == "z_plus" and manifest["options"]["lrp_composite"] is None
    got = _attributions(read_results(out)).astype(np.float64)
    x = torch.tensor(rows)
    wanted = LRP(mlp, rule="z_plus").attribute(x).detach().double().numpy()
    plain = LRP(mlp).attribute(x).detach().double().numpy()
    np.testing.assert_allclose(got, wanted, rtol=1e-5, atol=1e-6)
    assert np.abs(got - plain).max() > 1e-3 * np.abs(plain).max()  # the rule changed the numbers
    capsys.readouterr()
    for other, named in ((["--lrp-rule", "epsilon"], "lrp_rule"), (["--lrp-composite", "epsilon_plus"],
                                                                     "lrp_composite")):
        assert main([*common, "--resume", *other]) == 2
        assert re.search(rf"(?m)^  options\.{named}\b.*->", capsys.readouterr().err)
    assert main([*common, "--resume", "--lrp-rule", "z_plus"]) == 0  # the same settings: kept
    deeplift = ["-q", "dataset", str(MLP), "-i", str(tmp_path / "rows.npz"), "-o", str(tmp_path / "dl")]
    assert main([*deeplift, "--lrp-rule", "z_plus"]) == 2
    assert "--lrp-rule applies to --method lrp" in capsys.readouterr().err
    assert main([*common, "--overwrite", "--lrp-rule", "z_B"]) == 2  # z_B needs bounds, refused before any row
    assert "--lrp-bounds" in capsys.readouterr().err


def test_n_steps_reach_every_row_and_are_recorded(tmp_path, mlp, features):
    """IG with --n-steps 8 equals the explainer's own 8-step IG, and differs from its 50-step default."""
    import torch

    from onnx_attr import IntegratedGradients

    np.savez(tmp_path / "rows.npz", features=features)
    summary = attribute_dataset(mlp, str(tmp_path / "rows.npz"), str(tmp_path / "out"), method="integratedgradients",
                                n_steps=8, quiet=True)
    assert summary["rows"] == len(features)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["options"]["n_steps"] == 8
    got = _attributions(read_results(tmp_path / "out")).astype(np.float64)
    x = torch.tensor(features)
    ig = IntegratedGradients(mlp)
    np.testing.assert_allclose(got, ig.attribute(x, n_steps=8).detach().double().numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, ig.attribute(x, n_steps=50).detach().double().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match=r"(?m)^  options\.n_steps\b.*->"):
        attribute_dataset(mlp, str(tmp_path / "rows.npz"), str(tmp_path / "out"), method="integratedgradients",
                          n_steps=16, resume=True, quiet=True)


def test_results_read_back_when_a_shard_holds_failed_rows_alone(tmp_path):
    """A folder with one unreadable file beside a good one, on a model whose H, W are dynamic: the failed
    file's shard could not know the attributions' shape ([3, 1, 1]), so read_results' concatenation raised
    pyarrow's ArrowInvalid (sweep 35). Its null columns take the shape the results have; its rows read as
    NaN. Oracle: the good rows' attributions by hand (a sum's are the inputs themselves, zero baseline)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnx_attr.app.cli import main

    graph = helper.make_graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
                              [numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    data = tmp_path / "data"
    data.mkdir()
    x = np.random.default_rng(0).random((2, 3, 4, 5)).astype(np.float32)
    np.savez(data / "a.npz", x=x)
    (data / "b.npz").write_text("not an npz")
    out = tmp_path / "out"
    assert main(["dataset", str(path), "-i", str(data), "-o", str(out), "--no-report", "-q"]) == 4
    table = read_results(out)
    got = attribution_array(table)
    assert got.shape == (3, 3, 4, 5) and table.column("status").to_pylist().count("ok") == 2
    ok = np.asarray([s == "ok" for s in table.column("status").to_pylist()])
    np.testing.assert_allclose(got[ok], x, rtol=1e-6)
    assert np.isnan(got[~ok]).all()


def _state_model() -> bytes:
    """y[N, 1] = Σ x[N, 6] + sr · Σ s[2, N, 3] (the state batched on axis 1, as silero-vad's), sr a 0-d int64."""
    from onnx import TensorProto, helper

    from conftest import make_model

    nodes = [
        helper.make_node("ReduceSum", ["x", "axis1"], ["sx"], keepdims=1),
        helper.make_node("Transpose", ["s"], ["st"], perm=[1, 0, 2]),
        helper.make_node("Flatten", ["st"], ["sf"], axis=1),
        helper.make_node("ReduceSum", ["sf", "axis1"], ["ss"], keepdims=1),
        helper.make_node("Cast", ["sr"], ["rate"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["ss", "rate"], ["scaled"]),
        helper.make_node("Add", ["sx", "scaled"], ["y"]),
    ]
    return make_model(nodes, [("x", TensorProto.FLOAT, ["N", 6]), ("s", TensorProto.FLOAT, [2, "N", 3]),
                              ("sr", TensorProto.INT64, [])], [("y", TensorProto.FLOAT, ["N", 1])],
                      {"axis1": np.array([1])}).SerializeToString()


def test_rows_are_read_on_each_inputs_batch_axis_and_a_0d_input_goes_with_every_row(tmp_path):
    """The .npz `attribute` takes (sweep 35, silero-vad: a state [2, N, 128] and a 0-d sample rate) is
    N rows here too: each row's state is s[:, j], and sr goes with every row. Hand-computed: the model is
    linear in x and s, so from a zero baseline x's attributions are x and s's are sr · s."""
    model = load(_state_model())
    rng = np.random.default_rng(4)
    x, s, sr = rng.normal(0, 50, (5, 6)).astype(np.float32), rng.normal(0, 50, (2, 5, 3)).astype(np.float32), 3
    np.savez(tmp_path / "rows.npz", x=x, s=s, sr=np.array(sr))
    table = read_results(_run(tmp_path / "rows.npz", tmp_path / "out", model, batch_size=2))
    assert table.column("status").to_pylist() == ["ok"] * 5
    np.testing.assert_allclose(_attributions(table, "attributions_x"), x, rtol=1e-5)
    np.testing.assert_allclose(_attributions(table, "attributions_s"), np.moveaxis(s, 1, 0) * sr, rtol=1e-5)
    assert "attributions_sr" not in table.column_names  # held at its value, as `attribute` holds it
    # a one-row baseline holds the state's row on its axis 1 ([2, 1, 3]): one row, not two
    base_x, base_s = rng.normal(0, 5, (1, 6)).astype(np.float32), rng.normal(0, 5, (2, 1, 3)).astype(np.float32)
    np.savez(tmp_path / "base.npz", x=base_x, s=base_s, sr=np.array(sr))
    table = read_results(_run(tmp_path / "rows.npz", tmp_path / "out2", model, baseline=str(tmp_path / "base.npz")))
    np.testing.assert_allclose(_attributions(table, "attributions_s"), np.moveaxis(s - base_s, 1, 0) * sr,
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(_attributions(table, "attributions_x"), x - base_x, rtol=1e-4, atol=1e-3)
    # the state's rows written first: they are not the rows of x
    np.savez(tmp_path / "rows_first.npz", x=x, s=np.moveaxis(s, 1, 0), sr=np.array(sr))
    table = read_results(_run(tmp_path / "rows_first.npz", tmp_path / "out3", model))
    assert "'s': '2 on axis 1'" in table.column("error").to_pylist()[0]
