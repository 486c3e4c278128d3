"""``agegroup predict PATH...``: every face of many photos, with the server's pipeline and no
server.

Folders are walked for photos; each photo gives one row per face (``agegroup.rows``), a file
that cannot be used one row with its error code and message, and the run goes on. A progress
bar (photos per second) goes to stderr, the table to ``--out`` (CSV, JSON lines or Parquet,
by its name) or as CSV to stdout. The exit status is 0 when every photo was read, 1 when some
were not (a summary says which errors), 2 when the run cannot start or finish (a usage error,
no model, an unwritable ``--out``, no Ray), 130 when interrupted.

``--out`` is written only when the run ends (to a temporary name, then renamed), so an
interrupted run never leaves half a file; what it had done is kept in ``OUT.partial`` (one JSON
line per photo) and ``--resume`` goes on from there, skipping the photos already in it or in
``OUT``. ``--workers N`` runs N processes that each load the model once; ``--ray ADDRESS``
runs the photos on a Ray cluster instead (``agegroup.ray_batch``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from agegroup.batch import (
    PARTIAL_SUFFIX,
    Journal,
    Tally,
    UsageError,
    grouped_by_path,
    local_rows,
    missing_module,
    photo_paths,
    worker_settings,
    write_table,
)
from agegroup.config import PROJECT_ROOT, Settings
from agegroup.rows import (
    FORMATS,
    Row,
    csv_lines,
    output_format,
    read_rows,
)

log = logging.getLogger("agegroup.cli")

EXIT_OK, EXIT_UNREAD, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agegroup",
        description="Predict the age group of every face in photos, without a server.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser(
        "predict",
        help="every face of the photos and folders given, one row per face",
        description=(
            "One row per face of every photo (folders are walked): path, face number, box, "
            "group, confidence, the seven probabilities, estimated age and its 80%% interval, "
            "flags, model; a file that cannot be used gives one row with its error. Exit "
            "status 0 when all were read, 1 when some were not."
        ),
    )
    predict.add_argument("paths", nargs="+", metavar="PATH", help="photos and folders of photos")
    predict.add_argument(
        "--out",
        type=Path,
        help=f"write the table here ({', '.join(FORMATS)}; by the name), atomically; "
        "default: CSV to stdout",
    )
    predict.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes, each loading the model once (default 1); with --ray, model copies",
    )
    predict.add_argument(
        "--runtime",
        choices=("onnx", "fastai"),
        default="onnx",
        help="onnx: the ONNX twin export.onnx (default); fastai: the learner export.pkl",
    )
    predict.add_argument(
        "--model",
        type=Path,
        help="the exported learner export.pkl, its twin beside it (default: AGE_MODEL_PATH)",
    )
    predict.add_argument(
        "--resume",
        action="store_true",
        help="go on from an interrupted run (OUT.partial) or OUT: skip the photos in them",
    )
    predict.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run on Ray Data: a cluster's address (auto, ray://host:10001) or 'local' "
        "(a Ray of --workers CPUs on this machine); needs pip install 'agegroup[ray]'",
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = replace(Settings.from_env(), runtime=args.runtime)
    if args.model is not None:
        settings = replace(settings, model_path=args.model, model_dir=args.model.resolve().parent)
    return settings


def _rows_source(
    args: argparse.Namespace, todo: list[str], settings: Settings
) -> Iterator[tuple[str, list[Row]]]:
    if args.ray:
        from agegroup.ray_batch import ray_rows

        return ray_rows(todo, settings, args.ray, args.workers)
    return local_rows(todo, worker_settings(settings, args.workers), args.workers)


def _progress(total: int, done: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, initial=done, unit="photo", file=sys.stderr, dynamic_ncols=True, smoothing=0.1
    )


def predict_to_stdout(args: argparse.Namespace, paths: list[str], stdout: IO[str]) -> int:
    tally = Tally()
    with _progress(len(paths), 0) as bar:
        for _, rows in _rows_source(args, paths, _settings(args)):
            # The header comes with the first rows: nothing is written if the model is missing.
            first = tally.photos == 0
            stdout.write(csv_lines(tally.count(rows), header=first))
            stdout.flush()
            bar.update()
    print(tally.summary("rows on stdout"), file=sys.stderr)
    return EXIT_UNREAD if tally.errors else EXIT_OK


def predict_to_file(args: argparse.Namespace, paths: list[str]) -> int:
    out: Path = args.out
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    if partial.exists() and not args.resume:
        raise UsageError(
            f"{partial} holds an interrupted run's results: add --resume to go on from it, "
            "or delete it to start again."
        )
    journal = Journal(partial, keep=args.resume)
    wanted = set(paths)
    if args.resume and out.exists():
        for path, rows in grouped_by_path(read_rows(out)):
            if path in wanted and path not in journal.offsets:
                journal.add(path, rows)
    todo = [path for path in paths if path not in journal.offsets]
    try:
        with _progress(len(paths), len(paths) - len(todo)) as bar:
            for path, rows in _rows_source(args, todo, _settings(args)) if todo else ():
                journal.add(path, rows)
                bar.update()
    except BaseException as exc:
        journal.close()
        if not journal.offsets:
            partial.unlink()  # nothing done: nothing to resume
        if not isinstance(exc, KeyboardInterrupt) or not journal.offsets:
            raise
        print(
            f"Interrupted: {len(journal.offsets)} of {len(paths)} photos done, kept in "
            f"{partial}. Run the same command with --resume to go on.",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    tally = Tally()
    write_table(out, (tally.count(journal.rows(path)) for path in paths))
    journal.close()
    partial.unlink()
    print(tally.summary(f"written to {out}"), file=sys.stderr)
    return EXIT_UNREAD if tally.errors else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    from agegroup.errors import ModelUnavailable

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING").upper())
    try:
        if args.workers < 1:
            raise UsageError("--workers must be at least 1")
        if args.resume and args.out is None:
            raise UsageError("--resume needs --out: the file to go on from")
        if args.out is not None:
            output_format(args.out)
        paths = photo_paths(args.paths)
        if not paths:
            raise UsageError(f"No photos found in {' '.join(args.paths)}.")
        if args.out is None:
            return predict_to_stdout(args, paths, sys.stdout)
        return predict_to_file(args, paths)
    except (UsageError, ValueError, OSError) as exc:  # OSError: --out unwritable, no Ray
        print(f"agegroup: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelUnavailable as exc:
        print(f"agegroup: no model: {exc.message}", file=sys.stderr)
        if not (PROJECT_ROOT / "model").is_dir():
            print(
                f"agegroup: there is no model folder in {PROJECT_ROOT}: an installed copy of "
                "the package finds the checkout's through AGE_PROJECT_ROOT.",
                file=sys.stderr,
            )
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        message = missing_module(exc)
        if message is None:
            raise
        print(f"agegroup: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
