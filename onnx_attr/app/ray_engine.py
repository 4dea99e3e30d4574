"""`--engine ray`: the dataset job's shards on Ray Data workers, embedded or on a cluster.

The driver sends only shard indices: `ray.data.from_items` -> `map_batches` with `ShardWorker`,
a callable class, so each worker actor loads and rewrites the model once and then reads, attributes
and commits the shards it is given where it runs (no rows pass through the driver). Ray Data
retries a task whose actor died; its shard is rewritten under the same name, so a retried or
duplicated task never adds rows twice. Ray is an optional extra: `pip install "onnx-attr[ray]"`.
"""

from __future__ import annotations

from typing import Optional, Sequence

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
            raise InputError(f"--address {options.get('address')!r}: cannot join the Ray cluster ({err}); "
                             + (_TOKEN_HINT if _refused_token(err) else "start one with `ray start --head`, or leave "
                                "--address out to run Ray embedded")) from err
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = not quiet
        workers = options.get("workers")
        cpus = options.get("cpus_per_worker") or 1.0
        items = [{"shard": s.index} for s in pending]
        # One block and one call per shard: what crosses Ray is a shard index in and four counts out,
        # never rows (a worker reads its rows and commits its Parquet file where it runs). One call in
        # flight per actor: a call is a whole shard, so queueing more only unbalances the last shards.
        pool = ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1) if workers else \
            ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, len(items)), max_tasks_in_flight_per_actor=1)
        done = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardWorker, batch_size=1, batch_format="numpy", compute=pool,
            fn_constructor_kwargs={"settings": settings, "sources": list(sources), "shards": list(shards),
                                   "folder": folder, "digest": digest, "threads": max(1, int(cpus))},
            num_cpus=cpus,
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


#: Ray >= 2.5x starts a cluster with token authentication when a token exists (~/.ray/auth_token), but a
#: driver given an explicit address sends one only with RAY_AUTH_MODE=token.
_TOKEN_HINT = ("the cluster asks for Ray's authentication token: run with RAY_AUTH_MODE=token set (the token is read "
               "from ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN, as the cluster's nodes read it), or "
               "give --address auto on a node of the cluster")


def _refused_token(err: BaseException) -> bool:
    """Whether joining failed on Ray's token authentication (the cause Ray wraps in ConnectionError)."""
    seen: Optional[BaseException] = err
    while seen is not None:
        if type(seen).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
