"""`--engine ray`: the dataset job's shards on Ray Data workers, embedded or on a cluster.

The driver sends only shard indices: `ray.data.from_items` -> `map_batches` with `ShardWorker`,
a callable class, so each worker actor loads and rewrites the model once and then reads, attributes
and commits the shards it is given where it runs (no rows pass through the driver). Ray Data
retries a task whose actor died; its shard is rewritten under the same name, so a retried or
duplicated task never adds rows twice. Ray is an optional extra: `pip install "onnx-attr[ray]"`.
"""

from __future__ import annotations

from typing import Sequence

from onnx_attr.errors import InputError


def run_on_ray(settings, sources: Sequence, shards: Sequence, pending: Sequence, folder: str, digest: str,
               options: dict, quiet: bool = False) -> dict:
    """Run `pending` shards on Ray; returns the rows, error rows and shards computed."""
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise InputError("--engine ray needs Ray Data: pip install \"onnx-attr[ray]\" (or run with --engine local, "
                         "the default)") from err
    from onnx_attr.app.dataset_job import ShardWorker

    counts = {"rows": 0, "errors": 0, "above_tolerance": 0, "shards": 0}
    if not pending:
        return counts
    started_here = not ray.is_initialized()
    if started_here:
        try:
            # "local": without --address, start a fresh embedded Ray, never a cluster another run left recorded
            ray.init(address=options.get("address") or "local", include_dashboard=False, log_to_driver=not quiet,
                     logging_level="ERROR")
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise InputError(f"--address {options.get('address')!r}: cannot join the Ray cluster ({err}); start "
                             "one with `ray start --head`, or leave --address out to run Ray embedded") from err
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = not quiet
        workers = options.get("workers")
        items = [{"shard": s.index} for s in pending]
        done = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardWorker, batch_size=1, batch_format="numpy",
            fn_constructor_kwargs={"settings": settings, "sources": list(sources), "shards": list(shards),
                                   "folder": folder, "digest": digest},
            concurrency=workers if workers else (1, max(1, len(items))),
            num_cpus=options.get("cpus_per_worker") or 1.0,
            num_gpus=options.get("gpus_per_worker") or 0,
        ).take_all()
    finally:
        if started_here:
            ray.shutdown()
    seen = set()
    for row in done:  # a duplicated task reports its shard twice; its file was committed once
        if int(row["shard"]) in seen:
            continue
        seen.add(int(row["shard"]))
        counts["rows"] += int(row["rows"])
        counts["errors"] += int(row["errors"])
        counts["above_tolerance"] += int(row["above_tolerance"])
        counts["shards"] += 1
    return counts
