"""The server as a visitor of a small host meets it: its processes limited to a share of a CPU.

    sudo .venv/bin/python -m tools.cpu_quota_bench --cpu-quota 0.1           # Render's free tier
    sudo .venv/bin/python -m tools.cpu_quota_bench --cpu-quota 0.1 --steps   # what startup costs
    .venv/bin/python -m tools.cpu_quota_bench --cpu-quota 0                   # no limit

Render's free instance gives the app a tenth of a CPU. This tool starts the server as
``render.yaml`` does (the Procfile's gunicorn command under render.yaml's environment,
``testsupport.server``) inside a cgroup that allows its processes ``--cpu-quota`` of a CPU
(``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` in v1: 10 ms of every 100 ms for 0.1; creating one
needs root), and measures what a visitor waits for: the cold start (process start to a healthy
``/healthz``), the first answer, one client's answers one after another (p50 / p95), and 4
clients at once. The photos are ``tools.bench``'s one-face 1280 x 800 JPEGs (UTKFace test crops
on a backdrop). ``--steps`` instead times each step of a worker's startup and of its first two
answers under the same limit, in one process (``startup_steps``): what each costs of the cold
start. Wall times depend on the rest of the machine too (the load average is reported).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

PERIOD_US = 100_000
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The cgroup v1 folders that may hold the cpu controller, by distribution.
V1_CPU_FOLDERS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")
# Puts the shell itself into the cgroup, then becomes the server: everything the server forks
# (gunicorn's worker) stays in it.
ENTER_CGROUP = 'echo $$ > "$0" && exec "$@"'


class CpuQuota(AbstractContextManager["CpuQuota"]):
    """A cgroup whose processes may use ``share`` of one CPU, removed on exit."""

    def __init__(self, share: float, name: str | None = None) -> None:
        if not 0 < share <= 64:
            raise ValueError(f"the CPU share must be above 0, not {share}")
        self.share = share
        self.name = name or f"agegroup-quota-{os.getpid()}"
        self.path: Path | None = None
        self.version = 0

    def __enter__(self) -> CpuQuota:
        quota_us = max(1000, round(self.share * PERIOD_US))
        controllers = CGROUP_ROOT / "cgroup.controllers"
        try:
            if controllers.is_file() and "cpu" in controllers.read_text().split():
                self.version, self.path = 2, CGROUP_ROOT / self.name
                subtree = CGROUP_ROOT / "cgroup.subtree_control"
                if "cpu" not in subtree.read_text().split():
                    subtree.write_text("+cpu")
                self.path.mkdir()
                (self.path / "cpu.max").write_text(f"{quota_us} {PERIOD_US}")
                return self
            for folder in V1_CPU_FOLDERS:
                if (CGROUP_ROOT / folder / "cpu.cfs_quota_us").is_file():
                    self.version, self.path = 1, CGROUP_ROOT / folder / self.name
                    self.path.mkdir()
                    (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                    (self.path / "cpu.cfs_quota_us").write_text(str(quota_us))
                    return self
        except PermissionError as exc:
            self.__exit__(None, None, None)
            raise PermissionError(f"creating a cgroup needs root ({exc})") from exc
        raise RuntimeError(f"no cgroup cpu controller under {CGROUP_ROOT} (v1 or v2)")

    @property
    def procs(self) -> Path:
        assert self.path is not None
        return self.path / "cgroup.procs"

    def throttling(self) -> dict[str, int]:
        """The controller's counts: periods, throttled periods and throttled time."""
        assert self.path is not None
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return {key: int(value) for key, value in stat.items()}

    def wrap(self, command: list[str]) -> list[str]:
        """``command`` started inside this cgroup."""
        return ["sh", "-c", ENTER_CGROUP, str(self.procs), *command]

    def __exit__(self, *exc: object) -> None:
        if self.path is not None and self.path.is_dir():
            for _ in range(50):  # the processes are gone a moment after they exit
                try:
                    self.path.rmdir()
                    return
                except OSError:
                    time.sleep(0.1)
            print(f"cpu_quota_bench: could not remove {self.path}", file=sys.stderr)


def no_quota() -> AbstractContextManager[None]:
    from contextlib import nullcontext

    return nullcontext()


# --- the server, as deployed ----------------------------------------------------------------


def served_env(detector: str | None = None) -> dict[str, str]:
    """render.yaml's environment, with ``AGE_FACE_DETECTOR`` set to ``detector`` if given."""
    from testsupport.server import render_env

    env = render_env()
    if detector:
        env["AGE_FACE_DETECTOR"] = detector
    return env


def measure_server(args: argparse.Namespace, quota: CpuQuota | None) -> dict[str, Any]:
    """Cold start, first answer, one client's p50 / p95 and 4 clients at once."""
    from agegroup.config import Settings
    from agegroup.training.data import spread_test_crops
    from testsupport.server import GunicornServer
    from tools.bench import Tally, connect, percentile, photo_sets, run_clients

    photos = photo_sets(spread_test_crops(20, args.data), variants=args.variants)["one"]
    log_path = Path(tempfile.mkstemp(prefix="agegroup-quota-", suffix=".log")[1])
    server = GunicornServer(Settings().model_path, log_path, served_env(args.detector))
    if quota is not None:
        server.command = quota.wrap(server.command)
    tally = Tally()
    result: dict[str, Any] = {}
    try:
        server.start(args.start_timeout)
        result["cold_start_s"] = round(server.cold_start_s, 2)
        status = server.request("GET", "/healthz")[0]
        if status != 200:
            raise RuntimeError(f"/healthz answered {status}:\n{server.log_tail()}")
        result["first_answer_s"] = round(tally.post(server, photos[0], connect(server)), 2)
        conn = connect(server)
        one = [
            tally.post(server, photos[1 + i % (len(photos) - 1)], conn)
            for i in range(args.requests)
        ]
        conn.close()
        result["one_client"] = {
            "requests": len(one),
            "p50_s": round(percentile(one, 50), 2),
            "p95_s": round(percentile(one, 95), 2),
        }
        together: list[float] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            own = connect(server)
            for k in range(args.each):
                elapsed = tally.post(server, photos[(index * args.each + k) % len(photos)], own)
                with lock:
                    together.append(elapsed)
            own.close()

        wall = run_clients(client, args.clients)
        result["clients_at_once"] = {
            "clients": args.clients,
            "photos_each": args.each,
            "p50_s": round(percentile(together, 50), 2),
            "slowest_s": round(max(together), 2),
            "all_done_s": round(wall, 2),
        }
        if quota is not None:
            result["throttling"] = quota.throttling()
    finally:
        server.stop()
        log_path.unlink(missing_ok=True)
    result["errors"] = tally.errors
    return result


# --- the startup, step by step --------------------------------------------------------------


def startup_steps(photo_path: Path) -> dict[str, float]:
    """Wall seconds of each step of a worker's startup and of its first two answers, in this
    process: imports, model, detector, warm-up, the rest of ``create_app``, then two answers
    through Flask's test client. Run inside the cgroup by ``--steps``."""
    # From the parent's spawn to here: the shell, the interpreter and this module's imports.
    steps = {"start Python": round(time.time() - float(os.environ["STEPS_SPAWNED_AT"]), 3)}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        steps[name] = round(now - mark, 3)
        mark = now

    import gunicorn.app.wsgiapp  # noqa: F401 (the master imports it before the worker forks)

    lap("import gunicorn")
    import flask  # noqa: F401

    lap("import flask")
    from agegroup import factory

    lap("import the app (agegroup.factory)")
    from agegroup.faces import FaceDetector

    lap("import the detector (agegroup.faces)")
    timed: dict[str, float] = {}

    def timing(name: str, call: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                timed[name] = round(time.perf_counter() - started, 3)

        return wrapper

    factory.load_predictor = timing("load the model", factory.load_predictor)  # type: ignore[method-assign]
    factory.load_detector = timing("load the detector", factory.load_detector)  # type: ignore[method-assign]
    FaceDetector.warm_up = timing("warm the detector up", FaceDetector.warm_up)  # type: ignore[method-assign]
    app = factory.create_app()
    lap("create_app")
    steps.update(timed)
    steps["create_app, the rest"] = round(steps.pop("create_app") - sum(timed.values()), 3)
    from testsupport.uploads import image_form, post_body

    body = image_form(photo_path.read_bytes())
    client = app.test_client()
    lap("test client")
    for name in ("first answer", "second answer"):
        response = post_body(client, "/api/predict", body)
        if response.status_code != 200:
            raise RuntimeError(f"{name}: {response.status_code} {response.get_data(as_text=True)}")
        lap(name)
    return steps


def measure_steps(args: argparse.Namespace, quota: CpuQuota | None) -> dict[str, Any]:
    """``startup_steps`` in a fresh Python under ``quota``, with the interpreter's own start."""
    from agegroup.config import Settings
    from agegroup.training.data import spread_test_crops
    from tools.bench import photo_sets

    photo = photo_sets(spread_test_crops(20, args.data), variants=1)["one"][0]
    with tempfile.TemporaryDirectory() as tmp:
        photo_path = Path(tmp) / "photo.jpg"
        photo_path.write_bytes(photo)
        command = [sys.executable, "-m", "tools.cpu_quota_bench", "--steps-child", str(photo_path)]
        if quota is not None:
            command = quota.wrap(command)
        env = {
            **os.environ,
            **served_env(args.detector),
            "AGE_MODEL_PATH": str(Settings().model_path),
            "STEPS_SPAWNED_AT": repr(time.time()),
        }
        started = time.perf_counter()
        done = subprocess.run(
            command, env=env, cwd=Path(__file__).resolve().parent.parent, capture_output=True
        )
        total = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the startup steps failed:\n{done.stderr.decode()[-3000:]}")
    steps = json.loads(done.stdout.decode().splitlines()[-1])
    result: dict[str, Any] = {"steps_s": steps, "total_s": round(total, 2)}
    if quota is not None:
        result["throttling"] = quota.throttling()
    return result


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def table(result: dict[str, Any]) -> str:
    """The run as a markdown table."""
    share = result["cpu_quota"] or "no limit"
    lines = [f"| what (CPU share: {share}; detector: {result['detector']}) | time |", "|---|---|"]
    if "server" in result:
        s = result["server"]
        one, many = s["one_client"], s["clients_at_once"]
        lines += [
            f"| cold start to a healthy /healthz | {s['cold_start_s']:.1f} s |",
            f"| first answer | {s['first_answer_s']:.2f} s |",
            f"| one client, p50 / p95 ({one['requests']} photos) | "
            f"{one['p50_s']:.2f} / {one['p95_s']:.2f} s |",
            f"| {many['clients']} clients at once, {many['photos_each']} photos each: p50 / "
            f"slowest | {many['p50_s']:.1f} / {many['slowest_s']:.1f} s |",
            f"| errors | {s['errors']} |",
        ]
    if "startup" in result:
        steps = result["startup"]["steps_s"]
        startup = sum(v for k, v in steps.items() if "answer" not in k)
        for name, seconds in steps.items():
            part = "" if "answer" in name else f" ({seconds / startup:.0%} of the startup)"
            lines.append(f"| {name} | {seconds:.2f} s{part} |")
    lines.append(
        f"| load average before / after | {result['load_before']} / {result['load_after']} |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cpu-quota", type=float, default=0.1, help="share of one CPU (0: no cgroup, no limit)"
    )
    parser.add_argument("--steps", action="store_true", help="time each startup step instead")
    parser.add_argument("--detector", help="AGE_FACE_DETECTOR (default: render.yaml's)")
    parser.add_argument("--steps-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help="UTKFace folder (default: AGE_UTKFACE_DIR)")
    parser.add_argument("--requests", type=int, default=10, help="one client's photos")
    parser.add_argument("--clients", type=int, default=4, help="clients at once")
    parser.add_argument("--each", type=int, default=2, help="photos per client at once")
    parser.add_argument("--variants", type=int, default=12, help="different photos")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.steps_child:
        print(json.dumps(startup_steps(args.steps_child)))
        return 0
    if args.data is None:
        from agegroup.config import UTKFACE_DIR

        args.data = UTKFACE_DIR
    result: dict[str, Any] = {
        "cpu_quota": args.cpu_quota,
        "detector": args.detector or served_env().get("AGE_FACE_DETECTOR", "the default"),
        "load_before": load_average(),
    }
    try:
        with CpuQuota(args.cpu_quota) if args.cpu_quota else no_quota() as quota:
            if args.steps:
                result["startup"] = measure_steps(args, quota)
            else:
                result["server"] = measure_server(args, quota)
    except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
        print(f"cpu_quota_bench: {exc}", file=sys.stderr)
        return 2
    result["load_after"] = load_average()
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result.get("server", {}).get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
