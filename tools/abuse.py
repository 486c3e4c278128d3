"""One abusive client against the deployed configuration: do the other visitors still get quick
answers, and does the server stay within its memory?

    .venv/bin/python -m tools.abuse [--seconds 35] [--every 7] [--compare-off] [--compare-404]
                                    [--pin]

The server starts as on Render: render.yaml's startCommand (the Procfile's, through
``testsupport.server``'s launcher) with render.yaml's environment, its per-client limits
included (``AGE_RATE_LIMIT``, ``AGE_MAX_INFLIGHT_PER_CLIENT``, ``AGE_TRUSTED_PROXIES=1``), and
the shipped model. The tool stands in for Render's proxy: each client is a visitor with its own
address, sent in ``X-Forwarded-For``, which the server trusts from its one proxy hop.

Three well-behaved clients send one photo every ``--every`` seconds (within 10%; a fresh
connection each time, as a browser after a pause), under render.yaml's limits (10 a minute),
for the whole run, which has three phases of ``--seconds``:

1. ``alone``: the well-behaved clients only;
2. ``sequential``: an abusive client posts photos in a loop on one keep-alive connection;
3. ``parallel``: another abusive client (another address) posts on 8 connections at once.

The abuser runs in a process of its own, so that its threads do not slow the measuring ones
(both still share this machine's CPU with the server: on Render the abuser is elsewhere).
``--pin`` gives the abuser a CPU of its own and the server and the measured clients the others.

Reported per phase: the well-behaved clients' p50/p95 and statuses, the abuser's statuses and
predictions per second, 5xx and dropped connections, and the server's peak RSS (VmHWM of all its
processes, reset at the start of each phase). ``--compare-off`` runs the ``parallel`` phase
again on a server with ``AGE_RATE_LIMIT=off``: what the limits buy; ``--compare-404`` adds a
phase in which the 8 connections post the same photos to an address with no route: what
answering any request costs, refused or not. Exit
status 1 when, with the limits on, the well-behaved p95 under abuse is over twice its p95
alone, the abuser gets no 429, a well-behaved request is refused, anything gets a 5xx or is
dropped, or the peak RSS is over ``--max-peak-mb``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agegroup.config import Settings
from testsupport.memory import memory_mb, process_tree, reset_peaks
from testsupport.server import GunicornServer, render_env
from testsupport.uploads import MULTIPART, image_form
from tools.bench import percentile
from tools.soak import valid_photos

WELL_BEHAVED = ("203.0.113.11", "203.0.113.12", "203.0.113.13")
PREDICT = "/api/predict"
# One abusive address per phase, so that each phase starts with a fresh budget: its
# connections and what it posts to. "flood_404" (--compare-404) posts the same photos to an
# address with no route: what answering any request costs, whatever the limits.
ABUSERS = {
    "sequential": ("198.51.100.1", 1, PREDICT),
    "parallel": ("198.51.100.2", 8, PREDICT),
    "flood_404": ("198.51.100.3", 8, "/api/nowhere"),
}
CHECKED = ("sequential", "parallel")
DROPPED = 0  # the status recorded for a connection that failed without an answer


def post(
    port: int,
    address: str,
    body: bytes,
    conn: http.client.HTTPConnection | None,
    path: str = PREDICT,
) -> int:
    """One upload from ``address`` (on ``conn`` if given, else a connection of its own)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": MULTIPART, "X-Forwarded-For": address}
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        conn.close()
        return DROPPED
    finally:
        if own:
            conn.close()


def abuse(
    port: int,
    address: str,
    connections: int,
    path: str,
    start: float,
    stop: float,
    bodies: list[bytes],
    results: Any,
    cpus: set[int] | None = None,
) -> None:
    """An abusive client: ``connections`` keep-alive connections posting as fast as the server
    answers, from wall-clock ``start`` to ``stop``, on ``cpus`` if given; puts its status
    counts on ``results``."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    counts: Counter[int] = Counter()
    lock = threading.Lock()

    def loop(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine: Counter[int] = Counter()
        sent = index
        while time.time() < stop:
            mine[post(port, address, bodies[sent % len(bodies)], conn, path)] += 1
            sent += 1
        conn.close()
        with lock:
            counts.update(mine)

    time.sleep(max(0.0, start - time.time()))
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(dict(counts))


def cpu_seconds(root: int) -> float:
    """CPU time (user + system) used so far by ``root`` and its descendants."""
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    phase: str
    status: int
    ms: float


def well_behaved(
    port: int,
    address: str,
    bodies: list[bytes],
    every: float,
    phase_at: Any,
    stop: float,
    samples: list[Sample],
    rng: random.Random,
) -> None:
    """One photo every ``every`` seconds (within 10%) until ``stop``."""
    next_at = time.time() + rng.uniform(0, every)
    while True:
        time.sleep(max(0.0, next_at - time.time()))
        started = time.time()
        if started >= stop:
            return
        status = post(port, address, rng.choice(bodies), None)
        samples.append(Sample(phase_at(started), status, (time.time() - started) * 1000))
        next_at += every * rng.uniform(0.9, 1.1)


def run_phases(
    server: GunicornServer,
    phases: list[str],
    seconds: float,
    every: float,
    seed: int,
    abuser_cpus: set[int] | None = None,
) -> dict[str, Any]:
    """The well-behaved clients through ``phases``, an abuser in each phase that names one (on
    ``abuser_cpus`` if given)."""
    bodies = [image_form(photo) for photo in valid_photos(8, seed)]
    for body in bodies[:2]:  # warm: the first answers of a fresh worker are slower
        post(server.port, "192.0.2.1", body, None)
    spawn = multiprocessing.get_context("spawn")
    begin = time.time() + 3  # time for the abuser's process to start
    stop = begin + seconds * len(phases)

    def phase_at(moment: float) -> str:
        return phases[min(len(phases) - 1, max(0, int((moment - begin) // seconds)))]

    samples: list[Sample] = []
    rng = random.Random(seed)
    clients = [
        threading.Thread(
            target=well_behaved,
            args=(server.port, address, bodies, every, phase_at, stop, samples, rng),
        )
        for address in WELL_BEHAVED
    ]
    report: dict[str, Any] = {}
    time.sleep(max(0.0, begin - time.time()))
    for client in clients:
        client.start()
    root = server.process.pid  # type: ignore[union-attr]
    for index, phase in enumerate(phases):
        start, end = begin + index * seconds, begin + (index + 1) * seconds
        abuser = None
        results = spawn.Queue()
        if phase in ABUSERS:
            address, connections, path = ABUSERS[phase]
            args = (server.port, address, connections, path, start, end, bodies, results)
            abuser = spawn.Process(target=abuse, args=(*args, abuser_cpus))
            abuser.start()
        time.sleep(max(0.0, start - time.time()))
        reset_peaks(root)
        cpu_before = cpu_seconds(root)
        time.sleep(max(0.0, end - time.time()))
        server_cpu = cpu_seconds(root) - cpu_before
        counts = results.get(timeout=180) if abuser else {}
        if abuser:
            abuser.join(30)
        report[phase] = {"abuser": {str(k): v for k, v in sorted(counts.items())}}
        report[phase]["abuser_predictions_per_s"] = round(counts.get(200, 0) / seconds, 2)
        report[phase]["peak_mb"] = memory_mb(root)["peak_mb"]
        # Cores the server kept busy on average (this machine has os.cpu_count() of them).
        report[phase]["server_cores"] = round(server_cpu / seconds, 2)
    for client in clients:
        client.join()
    for phase in phases:
        mine = [s for s in samples if s.phase == phase]
        times = [s.ms for s in mine if s.status == 200]
        report[phase]["well_behaved"] = {
            "requests": len(mine),
            "statuses": dict(Counter(str(s.status) for s in mine)),
            "p50_ms": round(percentile(times, 50), 1) if times else None,
            "p95_ms": round(percentile(times, 95), 1) if times else None,
        }
        statuses = Counter(s.status for s in mine) + Counter(
            {int(k): v for k, v in report[phase]["abuser"].items()}
        )
        report[phase]["server_errors"] = sum(v for k, v in statuses.items() if k >= 500)
        report[phase]["dropped"] = statuses.get(DROPPED, 0)
    return report


def failures(report: dict[str, Any], max_peak_mb: float, max_ratio: float = 2.0) -> list[str]:
    """What the run shows against the bar: the limits' phases only."""
    found = []
    phases = report["limits_on"]
    alone = phases["alone"]["well_behaved"]["p95_ms"]
    for name, phase in phases.items():
        wb = phase["well_behaved"]
        if set(wb["statuses"]) != {"200"}:
            found.append(f"{name}: a well-behaved client got {wb['statuses']}")
        if name in CHECKED:
            if wb["p95_ms"] is None or wb["p95_ms"] > max_ratio * alone:
                found.append(f"{name}: well-behaved p95 {wb['p95_ms']} ms > {max_ratio} x {alone}")
            if not phase["abuser"].get("429"):
                found.append(f"{name}: the abuser got no 429 ({phase['abuser']})")
        if phase["server_errors"] or phase["dropped"]:
            found.append(f"{name}: {phase['server_errors']} 5xx, {phase['dropped']} dropped")
        if phase["peak_mb"] > max_peak_mb:
            found.append(f"{name}: peak RSS {phase['peak_mb']} MB > {max_peak_mb} MB")
    return found


def markdown(report: dict[str, Any]) -> str:
    """The report as the table in docs/abuse.md."""
    rows = [
        "| limits | phase | well-behaved p50 / p95 (ms) | well-behaved statuses "
        "| abuser statuses | abuser predictions/s | server cores busy | 5xx | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for limits in ("limits_on", "limits_off"):
        for name, phase in report.get(limits, {}).items():
            wb = phase["well_behaved"]
            abuser = ", ".join(f"{k}: {v}" for k, v in phase["abuser"].items()) or "-"
            statuses = ", ".join(f"{k}: {v}" for k, v in wb["statuses"].items())
            rows.append(
                f"| {limits.removeprefix('limits_')} | {name} | {wb['p50_ms']} / {wb['p95_ms']} "
                f"| {statuses} | {abuser} | {phase['abuser_predictions_per_s']} "
                f"| {phase['server_cores']} | {phase['server_errors']} | {phase['peak_mb']} |"
            )
    return "\n".join(rows)


def tracebacks(log: str, most: int = 3) -> list[str]:
    """The first ``most`` tracebacks in a server log, each up to its exception's line."""
    found = []
    for block in log.split("Traceback (most recent call last):")[1 : most + 1]:
        lines = block.splitlines()
        end = next((i for i, line in enumerate(lines[1:], 1) if not line.startswith(" ")), 0)
        found.append("\n".join(lines[: end + 1]))
    return found


def split_cpus() -> tuple[set[int], set[int]]:
    """(the server's and the well-behaved clients' CPUs, the abuser's): the last CPU this
    process may use goes to the abuser, as if it sent from elsewhere."""
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    return set(mine[:-1]), {mine[-1]}


def serve_and_run(
    env: dict[str, str], model: Path, phases: list[str], args: argparse.Namespace
) -> tuple[dict[str, Any], list[str]]:
    abuser_cpus = None
    if args.pin:
        server_cpus, abuser_cpus = split_cpus()
        os.sched_setaffinity(0, server_cpus)  # the server started below inherits it
    with tempfile.TemporaryDirectory(prefix="abuse-") as scratch:
        with GunicornServer(model, Path(scratch) / "gunicorn.log", env) as server:
            report = run_phases(server, phases, args.seconds, args.every, args.seed, abuser_cpus)
            return report, tracebacks(server.log_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=35, help="length of each phase")
    parser.add_argument("--every", type=float, default=7, help="a well-behaved client's pace")
    parser.add_argument("--compare-off", action="store_true", help="also run without limits")
    parser.add_argument("--compare-404", action="store_true", help="also flood a missing page")
    parser.add_argument("--model", type=Path, default=Settings().model_path)
    parser.add_argument("--max-peak-mb", type=float, default=450)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the abuser on a CPU of its own, the server and the measured clients on the others",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    env = render_env(limits=True)
    model = args.model.resolve()
    report: dict[str, Any] = {"render_env": env, "seconds": args.seconds, "every": args.every}
    report["cpu_count"] = os.cpu_count()
    report["pinned"] = args.pin
    report["load_average_before"] = os.getloadavg()
    phases = ["alone", "sequential", "parallel"] + (["flood_404"] if args.compare_404 else [])
    report["limits_on"], errors = serve_and_run(env, model, phases, args)
    if args.compare_off:
        off = {**env, "AGE_RATE_LIMIT": "off"}
        report["limits_off"], more = serve_and_run(off, model, ["parallel"], args)
        errors += more
    report["server_tracebacks"] = errors
    report["failures"] = failures(report, args.max_peak_mb)
    report["failures"] += [f"a traceback in the server's log: {t[-200:]}" for t in errors]
    text = json.dumps(report, indent=2)
    print(text)
    print(markdown(report))
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
