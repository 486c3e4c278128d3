"""``agegroup predict --ray ADDRESS``: the same rows, computed on a Ray cluster with Ray Data.

The files are read by ``ray.data.read_binary_files``; ``map_batches`` runs the pipeline in a
pool of actors that each load the model once (``AgeGroupDetector``, one CPU and one inference
thread each); the rows come back to this process in input order and are written by the
command as usual (``--out``, ``--resume``). Ray is an optional extra:
``pip install 'agegroup[ray]'``.

On a cluster, every node must see the photos and the model at the same paths (a shared
folder), and have this package installed; ``local`` starts a Ray on this machine with
``--workers`` CPUs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from agegroup.config import Settings
from agegroup.rows import Row, error_row

# Photos per call of an actor: small, so that the progress bar moves and a slow photo holds
# few others back; the model is loaded once per actor whatever the size.
BATCH_SIZE = 4


class _Predictor:
    """One actor: the model loaded once, then ``{"path", "bytes"}`` batches to rows (JSON)."""

    def __init__(self, settings: Settings) -> None:
        from agegroup.pipeline import AgeGroupDetector

        self.detector = AgeGroupDetector(settings=settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from agegroup.batch import photo_rows

        rows = [
            json.dumps(photo_rows(self.detector, str(path), bytes(data)))
            for path, data in zip(batch["path"], batch["bytes"])
        ]
        return {"path": batch["path"], "rows": np.asarray(rows, dtype=object)}


def _connect(address: str, cpus: int) -> bool:
    """Join the cluster at ``address``, or start a local Ray of ``cpus`` CPUs for ``local``;
    returns whether this process started it (and so stops it)."""
    import ray

    if ray.is_initialized():
        return False
    try:
        if address == "local":
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except Exception as exc:  # Ray raises plain Exceptions (a node that timed out, no cluster)
        raise ConnectionError(f"Ray did not start at {address!r}: {exc}") from exc
    return True


def _readable(path: str) -> Row | None:
    """The error row of a file this process cannot open (Ray would fail the whole read)."""
    from agegroup.pipeline import unreadable

    try:
        Path(path).open("rb").close()
    except OSError as exc:
        error = unreadable(Path(path), exc)
        return error_row(path, error.code, error.message)
    return None


def ray_rows(
    paths: Sequence[str], settings: Settings, address: str, actors: int
) -> Iterator[tuple[str, list[Row]]]:
    """``(path, rows)`` for each path, in order, computed by ``actors`` actors on Ray."""
    import ray
    import ray.data

    errors = {path: row for path in paths if (row := _readable(path)) is not None}
    readable = [path for path in paths if path not in errors]
    # Ray names files by their absolute path; the rows keep the names given.
    names = {str(Path(path).resolve()): path for path in readable}
    started = _connect(address, actors)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False  # the command shows its own
        done: dict[str, list[Row]] = {}
        pending = iter(paths)
        waiting = next(pending, None)

        def ready() -> Iterator[tuple[str, list[Row]]]:
            # Rows leave in input order, whatever order the actors finish in.
            nonlocal waiting
            while waiting is not None and (waiting in errors or waiting in done):
                rows = [errors[waiting]] if waiting in errors else done.pop(waiting)
                yield waiting, rows
                waiting = next(pending, None)

        yield from ready()
        if readable:
            # Reads ask for no CPU: the actors hold every CPU, and reads that asked for some
            # would wait for them forever.
            dataset = ray.data.read_binary_files(
                list(names), include_paths=True, num_cpus=0
            ).map_batches(
                _Predictor,
                fn_constructor_kwargs={"settings": replace(settings, torch_threads=1)},
                batch_size=BATCH_SIZE,
                concurrency=actors,
                num_cpus=1,
            )
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for path, rows in zip(batch["path"], batch["rows"]):
                    name = names[_local(str(path))]
                    done[name] = [{**row, "path": name} for row in json.loads(rows)]
                yield from ready()
        if waiting is not None:
            raise RuntimeError(f"Ray returned no rows for {waiting}")
    finally:
        if started:
            ray.shutdown()


def _local(path: str) -> str:
    """Ray's name for a local file, back to an absolute path (it may drop the leading /)."""
    return path if path.startswith("/") else "/" + path
