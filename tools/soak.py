"""Soak the real gunicorn server: concurrent clients, valid photos mixed with bad files.

One command (a tiny learner is exported when no model is given or installed):

    .venv/bin/python -m tools.soak --requests 1000 --clients 4 [--model model/export.pkl]

It checks what a public upload form needs: no 5xx, no dropped connection, every valid photo
answered with the same probabilities as when sent alone (no cross-talk between concurrent
requests), and worker memory flat after warm-up. Prints a JSON report (``--out`` saves it);
the exit status is 1 when a check fails. tests/test_soak.py runs a short form in CI. The
server is started by ``testsupport.server``'s launcher.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from agegroup.config import UTKFACE_DIR, Settings
from agegroup.training.data import image_dir_of
from testsupport.memory import memory_mb, rss_mb
from testsupport.server import GunicornServer, render_env
from testsupport.uploads import image_bytes, image_form, png_claiming


# --- what the clients send ---------------------------------------------------------------------
def valid_photos(count: int, seed: int = 0) -> list[bytes]:
    """UTKFace photos when the data set is beside the clone, else synthetic faces."""
    folder = image_dir_of(UTKFACE_DIR)
    if folder.is_dir():
        names = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")[:5000]
        chosen = random.Random(seed).sample(names, min(count, len(names)))
        return [p.read_bytes() for p in chosen]
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = []
    for i in range(count):
        pixels = rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)
        pixels[40:120, 40:120] = (i * 53) % 256
        photos.append(image_bytes(Image.fromarray(pixels), "JPEG", quality=85))
    return photos


def bad_files(photos: list[bytes], seed: int = 0) -> list[tuple[bytes, set[int]]]:
    """Broken and hostile uploads with the statuses each may get."""
    fixed = [
        (b"", {400}),
        (b"<!doctype html><script>alert(1)</script>", {415}),
        (b"%PDF-1.4\n%%EOF\n", {415}),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", {415}),
        (png_claiming(100_000, 100_000), {413}),
    ]
    rng = random.Random(seed)
    mutated = []
    for photo in photos[:40]:
        cut = photo[: rng.randrange(10, max(11, len(photo) // 2))]
        flipped = bytearray(photo)
        for _ in range(8):
            flipped[rng.randrange(len(flipped))] ^= 0xFF
        mutated += [(cut, {415, 422}), (bytes(flipped), {200, 415, 422})]
    return fixed + mutated


# --- the soak ----------------------------------------------------------------------------------
@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    dropped: int = 0
    unexpected: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    max_diff: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def probabilities(body: bytes) -> list[list[float]]:
    faces = json.loads(body)["faces"]
    return [[face["probabilities"][k] for k in sorted(face["probabilities"])] for face in faces]


def run_soak(
    server: GunicornServer,
    requests: int = 1000,
    clients: int = 4,
    photo_count: int = 40,
    seed: int = 0,
    tolerance: float = 1e-6,
) -> dict:
    """Send ``requests`` uploads from ``clients`` threads over keep-alive connections."""
    photos = valid_photos(photo_count, seed)
    bad = bad_files(photos, seed)
    # What each photo gets when it is the only request in flight.
    alone = []
    for photo in photos:
        status, _, body = server.request("POST", "/api/predict", image_form(photo))
        if status != 200:
            raise RuntimeError(f"a valid photo got {status} when sent alone: {body[:200]!r}")
        alone.append(probabilities(body))

    rng = random.Random(seed)
    plan = [
        ("photo", rng.randrange(len(photos)))
        if rng.random() < 0.7
        else ("bad", rng.randrange(len(bad)))
        for _ in range(requests)
    ]
    tally = Tally()
    worker = server.worker_pids()[0]
    memory: list[tuple[int, float]] = [(0, rss_mb(worker))]
    done = [0]

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        for n in range(index, requests, clients):
            kind, which = plan[n]
            data = photos[which] if kind == "photo" else bad[which][0]
            try:
                status, _, body = server.request(
                    "POST", "/api/predict", image_form(data), conn=conn
                )
            except (OSError, http.client.HTTPException) as exc:
                with tally.lock:
                    tally.dropped += 1
                    tally.unexpected.append(f"request {n}: {type(exc).__name__}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
                continue
            with tally.lock:
                tally.statuses[status] += 1
                expected = {200} if kind == "photo" else bad[which][1]
                if status not in expected:
                    tally.unexpected.append(f"request {n} ({kind} {which}): {status}")
                if kind == "photo" and status == 200:
                    got, want = probabilities(body), alone[which]
                    diff = max(
                        (abs(a - b) for g, w in zip(got, want) for a, b in zip(g, w)),
                        default=1.0 if len(got) != len(want) else 0.0,
                    )
                    tally.max_diff = max(tally.max_diff, diff)
                    if len(got) != len(want) or diff > tolerance:
                        tally.mismatches.append(f"request {n}: photo {which} differs by {diff:.2e}")
                done[0] += 1
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    step = max(1, requests // 20)
    next_sample = step
    while any(thread.is_alive() for thread in threads):
        time.sleep(0.1)
        if done[0] >= next_sample:
            memory.append((done[0], rss_mb(worker)))
            next_sample += step
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    memory.append((done[0], rss_mb(worker)))

    warm = next((mb for n, mb in memory if n >= requests // 5), memory[-1][1])
    report = {
        "requests": requests,
        "clients": clients,
        "photos": len(photos),
        "bad_files": len(bad),
        "seconds": round(elapsed, 1),
        "requests_per_s": round(requests / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "server_errors": sum(v for k, v in tally.statuses.items() if k >= 500),
        "dropped_connections": tally.dropped,
        "unexpected": tally.unexpected[:20],
        "cross_talk_mismatches": len(tally.mismatches),
        "max_probability_difference": tally.max_diff,
        "memory_mb": {
            "start": round(memory[0][1], 1),
            "after_warmup": round(warm, 1),
            "end": round(memory[-1][1], 1),
            "growth_after_warmup": round(memory[-1][1] - warm, 1),
            "curve": [[n, round(mb, 1)] for n, mb in memory],
        },
        "worker_pid_unchanged": server.worker_pids() == [worker],
        # VmHWM of the master and the worker, added up: the whole server's peak.
        "peak_rss_mb": memory_mb(server.process.pid)["peak_mb"],  # type: ignore[union-attr]
    }
    return report


def failures(report: dict, max_growth_mb: float = 25.0) -> list[str]:
    """The checks a soak must pass; empty when all hold."""
    problems = []
    if report["server_errors"]:
        problems.append(f"{report['server_errors']} server errors")
    if report["dropped_connections"]:
        problems.append(f"{report['dropped_connections']} dropped connections")
    if report["unexpected"]:
        problems.append(f"unexpected answers: {report['unexpected'][:5]}")
    if report["cross_talk_mismatches"]:
        problems.append(
            f"{report['cross_talk_mismatches']} answers differ from the same photo alone"
        )
    if report["memory_mb"]["growth_after_warmup"] > max_growth_mb:
        problems.append(
            f"memory grew {report['memory_mb']['growth_after_warmup']} MB after warm-up"
        )
    if not report["worker_pid_unchanged"]:
        problems.append("the worker was restarted during the soak")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--model", type=Path, help="default: model/export.pkl, else a tiny one")
    parser.add_argument("--tiny", action="store_true", help="use the tiny test learner")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument("--max-growth-mb", type=float, default=25.0)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument(
        "--deployed", action="store_true", help="render.yaml's environment (AGE_RUNTIME=onnx, ...)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        model = args.model or Settings().model_path
        if args.tiny:
            model = Path(scratch) / "missing.pkl"
        env = {"GUNICORN_THREADS": str(args.threads), "WEB_CONCURRENCY": "1"}
        if args.deployed:
            env = render_env()
        if not model.is_file():
            print(f"{model} not found: exporting the tiny test learner", file=sys.stderr)
            from testsupport.learner import export_tiny_learner

            model = export_tiny_learner(Path(scratch) / "export.pkl")
            label = "tiny test learner"
        else:
            label = str(model)
        log = Path(scratch) / "gunicorn.log"
        with GunicornServer(model.resolve(), log, env) as server:
            report = run_soak(server, args.requests, args.clients, args.photos)
        report["model"] = label
        report["server_log_errors"] = server.log_errors()
    return finish_report(report, failures(report, args.max_growth_mb), args.out)


def finish_report(report: dict, problems: list[str], out: Path | None) -> int:
    """Print the report (and write it to ``out``) with its failures; the exit status."""
    report["failures"] = problems
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
