"""Many photos through the server's pipeline: the photos a command line names, their rows,
worker processes that each load the model once, the journal that makes the output atomic and
resumable, and the run's tally. ``agegroup.cli`` is the command on top."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from agegroup.config import Settings
from agegroup.rows import (
    ParquetRows,
    Row,
    csv_lines,
    jsonl_lines,
    output_format,
)

log = logging.getLogger("agegroup.batch")

# The file names a folder is searched for (any case). Files named on the command line are
# always tried, whatever their name; HEIC is listed so that its row says how to convert it.
PHOTO_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".avif", ".gif", ".bmp", ".heic", ".heif"}
)
PARTIAL_SUFFIX = ".partial"


# What --runtime fastai, --ray and Parquet need, and how to install it.
OPTIONAL_MODULES = {
    "torch": "pip install -r requirements.txt",
    "torchvision": "pip install -r requirements.txt",
    "fastai": "pip install -r requirements.txt",
    "ray": "pip install 'agegroup[ray]'",
    "pyarrow": "pip install 'agegroup[ray]'",
}


class UsageError(Exception):
    """A run that cannot start: said on stderr, exit status 2."""


# --- inputs ---------------------------------------------------------------------------------


def photo_paths(arguments: Iterable[str]) -> list[str]:
    """The photos to read, in order: files as named, folders walked in name order.

    Hidden files and folders are skipped in a walk. A path given twice (also through a
    folder) is read once. A name that does not exist stays in the list: its row says so.
    """
    found: list[str] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(str(path))

    for argument in arguments:
        path = Path(argument)
        if not path.is_dir():
            add(path)
            continue
        for folder, folders, files in os.walk(path):
            folders[:] = sorted(name for name in folders if not name.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and Path(name).suffix.lower() in PHOTO_SUFFIXES:
                    add(Path(folder) / name)
    return found


# --- running the pipeline -------------------------------------------------------------------


def photo_rows(detector: Any, path: str, source: Any = None) -> list[Row]:
    """The rows of one photo (read from ``path`` unless ``source`` holds its bytes)."""
    from agegroup.errors import AppError
    from agegroup.rows import error_row, face_rows

    try:
        answer = detector.predict(path if source is None else source)
    except AppError as exc:
        return [error_row(path, exc.code, exc.message)]
    except Exception as exc:  # a fault in a library on one photo must not end the run
        # The traceback with LOG_LEVEL=DEBUG; the row says what happened.
        log.error("%s could not be analysed: %r", path, exc, exc_info=log.isEnabledFor(10))
        return [error_row(path, "internal_error", f"{type(exc).__name__}: {exc}")]
    return face_rows(path, answer)


_worker_detector: Any = None
_worker_error: str | None = None


def _start_worker(settings: Settings) -> None:
    """Load the model once in a worker process (``--workers``). A failure is kept and told to
    the command with the first photo: a pool whose initializer raises starts new workers
    forever."""
    global _worker_detector, _worker_error
    import signal

    from agegroup.errors import ModelUnavailable
    from agegroup.pipeline import AgeGroupDetector

    # Ctrl+C reaches the whole process group: the command stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _worker_detector = AgeGroupDetector(settings=settings)
    except ModelUnavailable as exc:
        _worker_error = exc.message
    except ModuleNotFoundError as exc:
        _worker_error = missing_module(exc) or str(exc)
    except Exception as exc:
        _worker_error = f"{type(exc).__name__}: {exc}"


def _worker_rows(path: str) -> tuple[str | None, list[Row]]:
    if _worker_error is not None:
        return _worker_error, []
    return None, photo_rows(_worker_detector, path)


def local_rows(
    paths: Sequence[str], settings: Settings, workers: int
) -> Iterator[tuple[str, list[Row]]]:
    """``(path, rows)`` for each path, in order, from this process or ``workers`` processes."""
    if workers == 1:
        from agegroup.pipeline import AgeGroupDetector

        detector = AgeGroupDetector(settings=settings)
        for path in paths:
            yield path, photo_rows(detector, path)
        return
    import multiprocessing

    # "spawn": a clean process per worker, not a fork of this one and its progress thread.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_start_worker, initargs=(settings,)) as pool:
        for path, (error, rows) in zip(paths, pool.imap(_worker_rows, paths, chunksize=1)):
            if error is not None:
                raise UsageError(f"the workers could not load the model: {error}")
            yield path, rows


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_settings(settings: Settings, workers: int) -> Settings:
    """Each of ``workers`` processes gets an equal share of the cores for inference, unless
    ``AGE_TORCH_THREADS`` says how many threads each uses."""
    if settings.torch_threads or workers == 1:
        return settings
    return replace(settings, torch_threads=max(1, cpu_count() // workers))


# --- output ---------------------------------------------------------------------------------


class Journal:
    """``OUT.partial``: one JSON line per finished photo, flushed as it is written, so an
    interrupted run keeps all it did. Only whole lines are trusted when it is read again."""

    def __init__(self, path: Path, keep: bool) -> None:
        self.path = path
        self.offsets: dict[str, int] = {}
        self._file = path.open("a+b" if keep else "w+b")
        if keep:
            self._load()

    def _load(self) -> None:
        self._file.seek(0)
        good = 0
        for line in self._file:
            try:
                entry = json.loads(line) if line.endswith(b"\n") else None
            except ValueError:
                entry = None
            if entry is None:
                break  # the last line of a killed run, cut short: done again
            self.offsets[entry["path"]] = good
            good += len(line)
        self._file.truncate(good)
        self._file.seek(good)

    def add(self, path: str, rows: list[Row]) -> None:
        self._file.seek(0, os.SEEK_END)
        self.offsets[path] = self._file.tell()
        line = json.dumps({"path": path, "rows": rows}, ensure_ascii=False) + "\n"
        self._file.write(line.encode("utf-8"))
        self._file.flush()

    def rows(self, path: str) -> list[Row]:
        self._file.seek(self.offsets[path])
        return json.loads(self._file.readline())["rows"]

    def close(self) -> None:
        self._file.close()


def grouped_by_path(rows: Iterable[Row]) -> Iterator[tuple[str, list[Row]]]:
    """Consecutive rows of the same photo, together (as the command writes them)."""
    current: str | None = None
    group: list[Row] = []
    for row in rows:
        if row["path"] != current and group:
            yield current, group  # type: ignore[misc]
            group = []
        current = row["path"]
        group.append(row)
    if group:
        yield current, group  # type: ignore[misc]


def write_table(out: Path, rows: Iterable[list[Row]]) -> None:
    """Every photo's rows into ``out``, atomically: a temporary file beside it, then renamed."""
    kind = output_format(out)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if kind == ".parquet":
            table = ParquetRows(temporary)
            for group in rows:
                table.write(group)
            table.close()
        else:
            csv = kind == ".csv"
            with temporary.open("w", encoding="utf-8", newline="") as handle:
                handle.write(csv_lines([]) if csv else "")
                for group in rows:
                    handle.write(csv_lines(group, header=False) if csv else jsonl_lines(group))
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)


class Tally:
    """What the summary says: photos read, faces, and the errors by code."""

    def __init__(self) -> None:
        self.photos = 0
        self.faces = 0
        self.errors: Counter[str] = Counter()

    def count(self, rows: list[Row]) -> list[Row]:
        self.photos += 1
        codes = [row["error_code"] for row in rows if row["error_code"]]
        self.errors.update(codes)
        self.faces += 0 if codes else sum(1 for row in rows if row["face_found"])
        return rows

    def summary(self, where: str) -> str:
        unread = sum(self.errors.values())
        faces = f"{self.faces} face{'' if self.faces == 1 else 's'}"
        text = f"{self.photos - unread} of {self.photos} photos read, {faces} found; {where}."
        if unread:
            codes = ", ".join(f"{code} {n}" for code, n in sorted(self.errors.items()))
            text += f" {unread} could not be read ({codes}): see error_code and error_message."
        return text


# --- the command ----------------------------------------------------------------------------


def missing_module(error: ModuleNotFoundError) -> str | None:
    """What to install for an optional module that is missing; None for any other module."""
    install = OPTIONAL_MODULES.get((error.name or "").split(".")[0])
    return None if install is None else f"{error.name} is not installed: {install}"
