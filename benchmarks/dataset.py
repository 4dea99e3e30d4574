"""The dataset job's engines on one input: local, Ray with 1 and 2 workers, a two-node Ray cluster.

    python benchmarks/dataset.py [--rows 2000] [--width 320] [--shard-rows 125] [--batch-size 32]
                                 [--method deeplift] [--skip-cluster]

The work: DeepLift on a small conv net (3x32x32 -> conv 32 -> conv W -> pool -> conv W -> pool ->
10 logits, W = `--width`, seeded weights, exported to ONNX here) over `--rows` image-like rows
(sklearn's digits upsampled to 32x32, three channels, scaled to 0..1): some 25-35 ms of DeepLift a
row on one quiet core at W = 320, about a minute locally, so compute dominates and the bars measure
the engines, not their start. Each configuration runs in its own process, confined
(sched_setaffinity) to its cores, with one torch thread per worker:

* local: 1 core, 1 torch thread (the in-process engine);
* Ray, 1 worker and 2 workers of 1 CPU each: embedded Ray (`ray.init(num_cpus=W)`), the process
  and every Ray process it starts confined to W + 1 cores, so each worker has a core and Ray's own
  processes (raylet, GCS, the driver) one more;
* a two-node cluster made here: `ray start --head --num-cpus 1` and a second
  `ray start --address ... --num-cpus 1`, the CLI joining it with `--address` and 2 workers.

Printed per configuration, the phases apart: the cluster's start (`ray.init`), the model load (the
first shard's commit less one shard's steady time: actors start, load and rewrite the model), the
steady rate (rows/s from the first committed shard to the last, by the shards' commit times: rows
after the first round of shards over that span) and the whole job's rate; every run's rows are
checked against local's (row ids in order, attributions to 1e-6). Ray Data's own cost per shard is
measured apart with a no-op callable class on the same pipeline (the median time between two
calls on one actor). Then the issue's bars as PASS/FAIL lines: Ray 1 worker >= 0.8x local, 2 workers >= 1.6x 1
worker (steady rates; this one needs a core per worker, so on fewer than 3 free cores it says it
cannot be shown), the two-node run completes with rows equal to local's; and the cost of one
Parquet row per example. A quiet 4+ core machine runs it in about 4 minutes; a loaded one is slower
and its figures pessimistic (the load average at the start is printed).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BARS = {"ray1_vs_local": 0.8, "ray2_vs_ray1": 1.6}


# -- the work ----------------------------------------------------------------------------------------------------

def make_model(path: Path, width: int) -> Path:
    """A seeded conv net, exported with torch's dynamo exporter (batch axis dynamic)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(width * 8 * 8, 10)).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (torch.rand(2, 3, 32, 32),), input_names=["image"], opset_version=18,
                                    dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    program.save(buffer)
    path.write_bytes(buffer.getvalue())
    return path


def make_input(path: Path, rows: int) -> Path:
    """Digits (8x8, 0..16) upsampled 4x to 32x32, three channels weighted apart, scaled to 0..1."""
    from sklearn.datasets import load_digits

    digits = np.kron(load_digits().images / 16.0, np.ones((4, 4)))  # [1797, 32, 32]
    images = np.stack([digits, 1.0 - digits, 0.5 * digits], axis=1).astype(np.float32)
    np.savez(path, image=np.resize(images, (rows, *images.shape[1:])))
    return path


# -- one configuration, in its own process ---------------------------------------------------------------------------

def child(args) -> int:
    """Run one engine (confined to `--cores`, one torch thread per worker) and print its figures as JSON."""
    import torch

    os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    torch.set_num_threads(1)
    from onnx_attr.app.dataset_job import attribute_dataset

    figures: dict = {"cores": args.cores, "workers": args.workers}
    ray_options = None
    if args.engine == "ray":
        import ray

        started = time.monotonic()
        ray.init(address="local", num_cpus=args.workers, num_gpus=0, include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
        figures["cluster_start"] = time.monotonic() - started
        ray_options = {"workers": args.workers, "cpus_per_worker": 1.0}
    began = time.time()
    summary = attribute_dataset(args.model, args.source, args.out, method=args.method, engine=args.engine,
                                ray_options=ray_options, shard_rows=args.shard_rows, batch_size=args.batch_size,
                                quiet=True, overwrite=True)
    figures.update(job=time.time() - began, rows=summary["rows"], errors=summary["error_rows_computed"],
                   commits=sorted(p.stat().st_mtime - began for p in Path(args.out).glob("shard-*.parquet")))
    if args.engine == "ray":
        per_shard, start = ray_data_overhead(args.workers, len(figures["commits"]))
        figures.update(ray_data_per_shard=per_shard, ray_data_start=start)
        import ray

        ray.shutdown()
    print("FIGURES " + json.dumps(figures))
    return 0


class _NoOp:
    """Ray Data's own cost: the dataset job's pipeline with a worker that only notes when it is called."""

    def __call__(self, batch: dict) -> dict:
        return {"shard": batch["shard"], "pid": np.full(len(batch["shard"]), os.getpid()),
                "at": np.full(len(batch["shard"]), time.time())}


def ray_data_overhead(workers: int, shards: int) -> tuple[float, float]:
    """`from_items -> map_batches(actor pool, one shard a call) -> take_all` with no work on
    4 x `shards` items: the median time between two calls on one actor (what Ray Data adds to
    each shard) and the time to the first call (the pool's start)."""
    import ray.data

    started = time.time()
    n = 4 * shards
    rows = ray.data.from_items([{"shard": i} for i in range(n)], override_num_blocks=n).map_batches(
        _NoOp, batch_size=1, batch_format="numpy", num_cpus=1.0,
        compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1)).take_all()
    calls: dict[int, list[float]] = {}
    for row in rows:
        calls.setdefault(int(row["pid"]), []).append(float(row["at"]))
    gaps = [b - a for times in calls.values() for a, b in zip(sorted(times), sorted(times)[1:])]
    first = min(float(row["at"]) for row in rows)
    return (float(np.median(gaps)) if gaps else float("nan")), first - started


def run_child(args, engine: str, workers: int, cores: list[int], source: Path, out: Path, model: Path) -> dict:
    command = [sys.executable, __file__, "--child", "--engine", engine, "--workers", str(workers),
               "--cores", ",".join(map(str, cores)), "--model", str(model), "--source", str(source),
               "--out", str(out), "--method", args.method, "--shard-rows", str(args.shard_rows),
               "--batch-size", str(args.batch_size)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    line = next((l for l in done.stdout.splitlines() if l.startswith("FIGURES ")), None)
    if done.returncode != 0 or line is None:
        return {"failed": f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-800:]}"}
    figures = json.loads(line[len("FIGURES "):])
    return {**figures, **phases(figures, args.shard_rows, workers)}


def phases(figures: dict, shard_rows: int, workers: int) -> dict:
    """The steady rate (rows after the first round of shards, over the span from the first commit
    to the last) and the start it implies (the first commit less one shard's steady time)."""
    commits = figures["commits"]
    out = {"total_rate": figures["rows"] / figures["job"]}
    if len(commits) > workers and commits[-1] > commits[0]:
        steady = (len(commits) - workers) * shard_rows / (commits[-1] - commits[0])
        out.update(steady=steady, start=max(0.0, commits[0] - shard_rows * workers / steady))
    else:
        out.update(steady=float("nan"), start=float("nan"))
    return out


# -- checks and costs ------------------------------------------------------------------------------------------------

def same_rows(a: Path, b: Path) -> tuple[bool, str]:
    from onnx_attr.app.dataset_job import attribution_array, read_results

    ta, tb = read_results(a), read_results(b)
    if ta.column("row_id").to_pylist() != tb.column("row_id").to_pylist():
        return False, "row ids differ from local"
    worst = float(np.nanmax(np.abs(attribution_array(ta) - attribution_array(tb))))
    return worst <= 1e-6, f"rows {'equal' if worst <= 1e-6 else 'DIFFER from'} local (max |diff| {worst:.1e})"


def parquet_cost(out: Path, rows: int) -> str:
    import pyarrow.parquet as pq

    shards = sorted(out.glob("shard-*.parquet"))
    size = sum(p.stat().st_size for p in shards)
    tables = [pq.read_table(p) for p in shards]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        for i, table in enumerate(tables):
            pq.write_table(table, Path(tmp) / f"{i}.parquet")
        seconds = time.perf_counter() - started
    return (f"{size / rows:.0f} bytes/row on disk ({size / 1e6:.2f} MB for {rows} rows, attributions "
            f"{int(np.prod(tables[0].schema.field('attributions').type.shape))} float32 each); "
            f"write {seconds / rows * 1e6:.1f} us/row")


# -- the two-node cluster --------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_node_cluster(args, source: Path, out: Path, model: Path) -> tuple[bool, str]:
    """Head and worker node here (1 CPU each), the CLI joined with --address; both stopped after."""
    ray = str(Path(sys.executable).parent / "ray")
    port = free_port()
    # Ray starts a cluster with token authentication when it finds a token, and a driver given an explicit
    # address sends one only in token mode: the nodes and the CLI share a token made for this cluster
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    common = ["--num-cpus", "1", "--num-gpus", "0", "--block", "--disable-usage-stats"]
    address = f"127.0.0.1:{port}"
    started = time.monotonic()
    nodes = [subprocess.Popen([ray, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)]
    try:
        alive, why = _wait_for_nodes(address, 1, 180, env)
        if alive != 1:
            return False, f"the head node did not come up within 180 s ({why})"
        nodes.append(subprocess.Popen([ray, "start", f"--address={address}", *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        alive, why = _wait_for_nodes(address, 2, 180, env)
        up = time.monotonic() - started
        began = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "onnx_attr.app.cli", "-q", "dataset", str(model), "-i", str(source),
                               "-o", str(out), "--method", args.method, "--engine", "ray", "--address", address,
                               "--workers", "2", "--shard-rows", str(args.shard_rows), "--batch-size",
                               str(args.batch_size), "--overwrite", "--no-report"],
                              env=env, capture_output=True, text=True)
        wall = time.monotonic() - began
        if done.returncode != 0:
            return False, f"FAILED (exit {done.returncode}): {done.stderr.strip()[-500:]}"
        return alive == 2, (f"{alive} nodes alive ({up:.1f} s to start both{'' if alive == 2 else '; ' + why}); the "
                            f"CLI with --address completed in "
                            f"{wall:.1f} s ({args.rows / wall:.1f} rows/s, its start included)")
    finally:
        for node in reversed(nodes):  # `ray start --block` stops its node's processes when it ends
            node.terminate()
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        _forget_cluster(address)


def _forget_cluster(address: str) -> None:
    """`ray start` records its address in <temp>/ray/ray_current_cluster, where a later embedded
    `ray.init()` would look for it; `ray stop` removes it, but that stops every Ray process here."""
    record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        if record.read_text().strip().endswith(address.split(":")[-1]):
            record.unlink()
    except OSError:
        pass


def _wait_for_nodes(address: str, count: int, timeout: float, env: dict) -> tuple[int, str]:
    """The nodes alive once `count` are (or at `timeout`), and the last line a failure printed."""
    code = ("import ray, sys, time\n"
            f"deadline = time.time() + {timeout}\n"
            "while True:\n"
            "    try:\n"
            f"        ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False); break\n"
            "    except Exception:\n"
            "        if time.time() > deadline: raise\n"
            "        time.sleep(1)\n"
            f"while sum(n['Alive'] for n in ray.nodes()) < {count} and time.time() < deadline: time.sleep(0.5)\n"
            "print(sum(n['Alive'] for n in ray.nodes()))\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout + 60,
                              env=env)
    except subprocess.TimeoutExpired:
        return 0, "timed out"
    if done.returncode == 0 and done.stdout.strip():
        return int(done.stdout.strip().splitlines()[-1]), ""
    return 0, (done.stderr.strip().splitlines() or ["no output"])[-1][-300:]


# -- the report ------------------------------------------------------------------------------------------------------

def _number(value: float, digits: int = 1) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def bar(name: str, value: float, needed: float, shown: bool = True, why: str = "") -> str:
    if not shown:
        return f"CANNOT SHOW  {name}: {_number(value, 2)}x (bar >= {needed}x): {why}"
    verdict = "PASS" if value == value and value >= needed else "FAIL"
    return f"{verdict:<12} {name}: {_number(value, 2)}x (bar >= {needed}x)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--width", type=int, default=320, help="channels of the conv net's wide layers (cost grows "
                                                               "with its square; default 320, ~30 ms/row of DeepLift)")
    parser.add_argument("--shard-rows", type=int, default=125)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--method", default="deeplift")
    parser.add_argument("--skip-cluster", action="store_true", help="leave out the two-node cluster")
    for name in ("--engine", "--cores", "--model", "--source", "--out"):  # the child's, set by the parent
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    cpus = sorted(os.sched_getaffinity(0))
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {len(cpus)} usable CPUs; {args.rows} rows "
          f"3x32x32, conv width {args.width}, {args.method}, shards of {args.shard_rows}, batches of {args.batch_size}")
    began = time.monotonic()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = make_model(folder / "convnet.onnx", args.width)
        source = make_input(folder / "images.npz", args.rows)
        plan = [("local", "local, 1 core, 1 thread", "local", 1, cpus[:1]),
                ("ray1", "ray, 1 worker (1 CPU)", "ray", 1, cpus[:2]),
                ("ray2", "ray, 2 workers (1 CPU each)", "ray", 2, cpus[:3])]
        for key, _, engine, workers, cores in plan:
            results[key] = run_child(args, engine, workers, cores, source, folder / key, model)
            if key == "local" and "failed" not in results[key]:
                local = results[key]["job"]
                print(f"local job: {local:.1f} s; the rest will take about {2 * local + 60:.0f} s more"
                      + ("" if local < 100 else " (over the 6 minutes meant: a smaller --width or --rows is faster)"))
        print(f"{'engine':<28} {'cores':>5} {'cluster':>8} {'load':>6} {'steady':>8} {'job':>7} {'rows/s':>8}  rows")
        print(f"{'':<28} {'':>5} {'start s':>8} {'s':>6} {'rows/s':>8} {'s':>7} {'total':>8}")
        for key, title, *_ in plan:
            r = results[key]
            if "failed" in r:
                print(f"{title:<28} FAILED {r['failed']}")
                continue
            check = "reference" if key == "local" else same_rows(folder / "local", folder / key)[1]
            print(f"{title:<28} {len(r['cores'].split(',')):>5} {_number(r.get('cluster_start')):>8} "
                  f"{_number(r['start']):>6} {_number(r['steady']):>8} {r['job']:>7.1f} {r['total_rate']:>8.1f}  "
                  f"{check}")
        print("cluster start: ray.init; load: the first shard's commit less one shard's steady time (actors start, "
              "the model loads and is rewritten); steady: rows/s from the first committed shard to the last; "
              "rows/s total: over the job's clock")
        for key in ("ray1", "ray2"):
            r = results[key]
            if "ray_data_per_shard" in r:
                shard = args.shard_rows * r["workers"] / r["steady"] if r.get("steady") else float("nan")
                cost = r["ray_data_per_shard"]
                print(f"Ray Data's own cost ({key}, a no-op worker on the same pipeline): {cost * 1e3:.1f} ms per "
                      f"shard ({100 * cost / shard:.2f}% of a {args.shard_rows}-row shard's {shard:.2f} s), "
                      f"pipeline start {r['ray_data_start']:.1f} s")
        ok = {k: "failed" not in r for k, r in results.items()}
        rate = lambda k: results[k]["steady"] if ok[k] else float("nan")  # noqa: E731
        lines = []
        equal = {k: ok[k] and same_rows(folder / "local", folder / k)[0] for k in ("ray1", "ray2")}
        lines.append(bar("ray 1 worker / local, steady", rate("ray1") / rate("local"), BARS["ray1_vs_local"]))
        lines.append(bar("ray 2 workers / 1 worker, steady", rate("ray2") / rate("ray1"), BARS["ray2_vs_ray1"],
                         shown=len(cpus) >= 3, why=f"needs 3 cores (a core per worker and one for Ray), "
                                                   f"this process may use {len(cpus)}"))
        if ok["ray1"] and ok["local"]:
            overhead = results["ray1"]["job"] - results["local"]["job"]
            lines.append(f"{'INFO':<12} ray's overhead at 1 worker: {overhead:+.1f} s on the job "
                         f"({results['ray1']['total_rate'] / results['local']['total_rate']:.2f}x local's total rate; "
                         f"cluster start {results['ray1']['cluster_start']:.1f} s not included), steady "
                         f"{rate('ray1') / rate('local'):.2f}x")
        lines.append(f"{'PASS' if all(equal.values()) else 'FAIL':<12} ray's rows equal local's (1e-6)")
        if ok["local"]:
            print("parquet, one row per example:", parquet_cost(folder / "local", args.rows))
        if not args.skip_cluster:
            completed, text = two_node_cluster(args, source, folder / "cluster", model)
            if completed:
                completed, check = same_rows(folder / "local", folder / "cluster")
                text = f"{text}; {check}"
            lines.append(f"{'PASS' if completed else 'FAIL':<12} two-node cluster (ray start --head + ray start "
                         f"--address, 1 CPU each): {text}")
        for key in results:
            shutil.rmtree(folder / key, ignore_errors=True)
    print("\n".join(lines))
    print(f"benchmark took {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
