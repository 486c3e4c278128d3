"""Throughput of many photos: the command with 1 and 2 workers, Ray on 2 CPUs, and the same
photos sent to the server over HTTP one after another (as the page sends a batch).

    python -m tools.batch_bench                   # 60 photos, every mode, the shipped model
    python -m tools.batch_bench --photos 30 --modes workers1,workers2

The photos are ``testsupport.batch.photo_folder``'s (Grace Hopper's portrait at 200-360 px as
JPEG, PNG and WebP, the group of five every 7th, the faceless photo every 9th). Each mode runs
as a user runs it: ``agegroup predict`` in its own process (its rows are timed as they reach
``OUT.partial``), gunicorn with the Procfile's command. Reported: photos per second over the
whole run (model loading included) and from the first photo's row to the last (steady), and
the peak resident memory of the process tree (the sum of its processes' RSS, sampled every
0.1 s; for the server, its processes' peaks). Not a unit test: the numbers depend on the
machine and on whatever else runs on it (the load average is recorded with them).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from agegroup.config import PROJECT_ROOT
from testsupport.batch import photo_folder, predict_command
from testsupport.memory import memory_mb
from testsupport.server import GunicornServer
from testsupport.uploads import image_form
from tools.bench import machine

MODES = ("workers1", "workers2", "ray2", "http")
DEFAULT_OUT = PROJECT_ROOT / "bench" / "results" / "batch.json"


@dataclass
class Run:
    mode: str
    command: str
    photos: int
    wall_s: float
    steady_s: float
    peak_rss_mb: float

    @property
    def photos_per_s(self) -> float:
        return self.photos / self.wall_s

    @property
    def steady_photos_per_s(self) -> float | None:
        """None when the rows arrived all at once (Ray hands its blocks over in bursts)."""
        return (self.photos - 1) / self.steady_s if self.steady_s > 0.5 else None


def run_command(
    mode: str, folder: Path, photos: int, work: Path, model: list[str], env: dict[str, str]
) -> Run:
    """``agegroup predict`` on the folder, timed by its rows reaching ``OUT.partial``."""
    options = {
        "workers1": ["--workers", "1"],
        "workers2": ["--workers", "2"],
        "ray2": ["--ray", "local", "--workers", "2"],
    }[mode]
    out = work / f"{mode}.csv"
    journal = out.with_name(out.name + ".partial")
    args = predict_command(folder, "--out", out, *options, *model)
    started = time.perf_counter()
    log = (work / f"{mode}.log").open("wb")
    process = subprocess.Popen(
        args, cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=log
    )
    peak, seen, first, last = 0.0, 0, None, None
    while process.poll() is None:
        peak = max(peak, memory_mb(process.pid)["rss_mb"])
        try:
            lines = journal.read_bytes().count(b"\n")
        except FileNotFoundError:
            lines = seen
        now = time.perf_counter()
        if lines > seen:
            first = first or now
            last, seen = now, lines
        time.sleep(0.1)
    wall = time.perf_counter() - started
    log.close()
    if process.returncode != 0 or first is None or last is None:
        said = (work / f"{mode}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(args)} exited with {process.returncode}:\n{said}")
    shown = " ".join(["agegroup predict PHOTOS --out rows.csv", *options, *model[:2]])
    return Run(mode, shown, photos, wall, last - first, peak)


def run_http(folder: Path, photos: int, work: Path, runtime: str, env: dict[str, str]) -> Run:
    """The photos posted to ``/api/predict`` one after another on one kept-alive connection."""
    files = sorted(folder.iterdir())
    with GunicornServer(
        PROJECT_ROOT / "model" / "export.pkl",
        work / "gunicorn.log",
        env={"AGE_RUNTIME": runtime, "AGE_RATE_LIMIT": "off", **env},
    ) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        times = []
        started = time.perf_counter()
        for path in files:
            status, _, body = server.request(
                "POST", "/api/predict", image_form(path.read_bytes(), path.name), conn=conn
            )
            if status != 200:
                raise RuntimeError(f"{path.name}: {status} {body[:200]!r}")
            times.append(time.perf_counter())
        wall = time.perf_counter() - started
        peak = memory_mb(server.process.pid)["peak_mb"]  # type: ignore[union-attr]
        conn.close()
    shown = f"POST /api/predict, one photo after another (gunicorn, AGE_RUNTIME={runtime})"
    return Run("http", shown, photos, wall, times[-1] - times[0], peak)


def markdown(runs: list[Run], info: dict) -> str:
    lines = [
        f"{info['nproc']} CPUs ({info['cpu']}), load average {info['load_average'][0]} at the "
        f"start and {info['load_average_end'][0]} at the end; {runs[0].photos} photos; "
        f"AGE_TORCH_THREADS={info.get('threads') or 'unset'}.",
        "",
        "| mode | photos/s (whole run) | photos/s (steady) | peak RSS (MB) |",
        "|---|---:|---:|---:|",
    ]
    for run in runs:
        steady = run.steady_photos_per_s
        lines.append(
            f"| {run.command} | {run.photos_per_s:.2f} | "
            f"{'-' if steady is None else f'{steady:.2f}'} | {run.peak_rss_mb:.0f} |"
        )
    return "\n".join(lines)


def best_of(runs: list[Run]) -> list[Run]:
    """Per mode, in the order first run, the run with the most photos per second: the one
    least slowed by whatever else ran on the machine."""
    best: dict[str, Run] = {}
    for run in runs:
        if run.mode not in best or run.photos_per_s > best[run.mode].photos_per_s:
            best[run.mode] = run
    return list(best.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=60)
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    parser.add_argument("--runtime", choices=("onnx", "fastai"), default="onnx")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--threads",
        type=int,
        help="AGE_TORCH_THREADS for every mode (default: the command's share of the cores per "
        "worker, all cores for the server)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every mode this many times, interleaved; the table shows each mode's best run",
    )
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")
    info = machine() | {"threads": args.threads}
    runs = []
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        folder = work / "photos"
        photo_folder(folder, args.photos, unreadable=False)
        model = ["--runtime", args.runtime, "--model", str(PROJECT_ROOT / "model" / "export.pkl")]
        env = {} if args.threads is None else {"AGE_TORCH_THREADS": str(args.threads)}
        for _ in range(args.rounds):
            for mode in modes:
                if mode == "http":
                    run = run_http(folder, args.photos, work, args.runtime, env)
                else:
                    run = run_command(mode, folder, args.photos, work, model, env)
                runs.append(run)
                print(f"{mode}: {run.photos_per_s:.2f} photos/s", file=sys.stderr)
    info["load_average_end"] = machine()["load_average"]
    table = markdown(best_of(runs), info)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": info,
                "runs": [
                    asdict(r)
                    | {"photos_per_s": r.photos_per_s, "steady_photos_per_s": r.steady_photos_per_s}
                    for r in runs
                ],
                "markdown": table,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
