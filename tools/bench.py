"""Benchmark the server the way it is deployed: memory, cold start, latency, throughput.

    python -m tools.bench                       # the ONNX runtime on model/export.onnx
    python -m tools.bench --runtime fastai      # the reference runtime, for comparison

Starts gunicorn with the ``Procfile``'s own command on a loopback port
(``testsupport.server``), posts composed ~1 MP photos (UTKFace test-split crops pasted on a
background) to ``/api/predict``, prints a table and writes it as JSON
(``bench/results/latest.json``). Not a unit test: its numbers depend on the machine and on
whatever else runs on it (the load average is recorded with them).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agegroup.config import PROJECT_ROOT, UTKFACE_DIR, Settings
from agegroup.onnx_runtime import onnx_model_path
from agegroup.training.data import spread_test_crops
from testsupport.memory import memory_mb
from testsupport.server import GunicornServer
from testsupport.uploads import image_form

PHOTO_SIZE = (1280, 800)  # 1.02 megapixels
DEFAULT_OUT = PROJECT_ROOT / "bench" / "results" / "latest.json"


# --- photos ---------------------------------------------------------------------------------


def gradient_backdrop(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A smooth two-colour gradient with a little noise, so the JPEG is photo-sized."""
    width, height = size
    top, bottom = rng.integers(40, 220, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    pixels = top * (1 - ramp) + bottom * ramp + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def compose_photo(
    faces: Sequence[Image.Image], rng: np.random.Generator, size: tuple[int, int] = PHOTO_SIZE
) -> bytes:
    """Paste ``faces`` side by side (random sizes and offsets) on a background; JPEG bytes."""
    photo = gradient_backdrop(rng, size)
    slot = size[0] // max(1, len(faces))
    for index, face in enumerate(faces):
        side = int(min(slot * 0.9, size[1] * 0.45) * rng.uniform(0.8, 1.0))
        x = index * slot + int(rng.integers(0, max(1, slot - side)))
        y = int(rng.integers(0, size[1] - side))
        photo.paste(face.resize((side, side), Image.Resampling.BILINEAR), (x, y))
    buffer = BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def photo_sets(crops: Sequence[Image.Image], variants: int, seed: int = 0) -> dict[str, list]:
    """``variants`` different one-face and five-face photos built from the crops."""
    rng = np.random.default_rng(seed)
    one = [compose_photo([crops[i % len(crops)]], rng) for i in range(variants)]
    five = [
        compose_photo([crops[(5 * i + k) % len(crops)] for k in range(5)], rng)
        for i in range(variants)
    ]
    return {"one": one, "five": five}


# --- the clients -----------------------------------------------------------------------------


@dataclass
class Tally:
    """Latencies and errors of the predictions so far (shared by client threads)."""

    count: int = 0
    errors: int = 0
    faces: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def post(self, server: GunicornServer, photo: bytes, conn: http.client.HTTPConnection) -> float:
        started = time.perf_counter()
        try:
            status, _, payload = server.request(
                "POST", "/api/predict", image_form(photo), timeout=120, conn=conn
            )
            faces = len(json.loads(payload).get("faces", [])) if status == 200 else -1
        except (OSError, http.client.HTTPException, ValueError):
            status, faces = 0, -1
            conn.close()
        elapsed = time.perf_counter() - started
        with self.lock:
            self.count += 1
            if status != 200:
                self.errors += 1
            else:
                self.faces.append(faces)
        return elapsed


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def connect(server: GunicornServer) -> http.client.HTTPConnection:
    """A keep-alive connection to ``server``."""
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)


def latency(
    server: GunicornServer, photos: Sequence[bytes], count: int, tally: Tally
) -> dict[str, float]:
    conn = connect(server)
    times = [tally.post(server, photos[i % len(photos)], conn) * 1000 for i in range(count)]
    conn.close()
    return {
        "requests": count,
        "p50_ms": round(percentile(times, 50), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "mean_ms": round(statistics.fmean(times), 1),
    }


def run_clients(client: Callable[[int], None], count: int) -> float:
    """Run ``client(0)`` ... ``client(count - 1)`` in threads at once; seconds until all end."""
    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def throughput(
    server: GunicornServer, photos: Sequence[bytes], clients: int, total: int, tally: Tally
) -> dict[str, float]:
    """``total`` requests shared by ``clients`` threads, each on its own keep-alive connection."""
    next_index = iter(range(total))
    lock = threading.Lock()
    times: list[float] = []

    def client() -> None:
        conn = connect(server)
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                break
            elapsed = tally.post(server, photos[index % len(photos)], conn)
            with lock:
                times.append(elapsed * 1000)
        conn.close()

    wall = run_clients(lambda _: client(), clients)
    return {
        "clients": clients,
        "requests": total,
        "per_s": round(total / wall, 2),
        "p50_ms": round(percentile(times, 50), 1),
    }


# --- the model alone ------------------------------------------------------------------------


def forward_ms(settings: Settings, crops: Sequence[Image.Image], repeats: int) -> dict[str, float]:
    """Median time of what the app runs per photo (preprocessing + network, every face with its
    mirror: ``predict_flip_averaged``) for 1 and 5 faces."""
    from agegroup.factory import load_predictor
    from agegroup.predictor import predict_flip_averaged

    predictor = load_predictor(settings)

    def median_ms(call: Callable[[], object]) -> float:
        call()
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            samples.append((time.perf_counter() - started) * 1000)
        return round(statistics.median(samples), 2)

    return {
        "one_face_ms": median_ms(lambda: predict_flip_averaged(predictor, crops[:1])),
        "five_faces_ms": median_ms(lambda: predict_flip_averaged(predictor, crops[:5])),
    }


def stage_profile(settings: Settings, photos: Sequence[bytes]) -> dict[str, float]:
    """CPU milliseconds per photo of each step of a request, in this process (no server).

    CPU time (``time.process_time``), not wall time, so that other work on a shared machine
    counts less. The detector reports its own steps (``FaceDetector.stages``: each search level
    by its input size, the second looks, landmarks, MTCNN, HOG, the face check); the others
    are those of ``agegroup.analysis.analyze``.
    """
    from agegroup.crops import crop_face
    from agegroup.faces import select_faces
    from agegroup.factory import load_detector, load_predictor
    from agegroup.images import decode_upload
    from agegroup.predictor import predict_groups

    predictor, detector = load_predictor(settings), load_detector(settings)
    spent: dict[str, float] = {}
    detector.stages.spent = spent  # this detector is the bench's own

    def timed(label: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return call(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.process_time() - started

        return wrapper

    def request(data: bytes) -> None:
        image = timed("decode", decode_upload)(data, settings.max_pixels, settings.work_size).image
        chosen = select_faces(timed("detect (all of it)", detector.detect)(image))
        crops = [timed("crop", crop_face)(image, box) for box in chosen]
        timed("model", predict_groups)(predictor, crops or [image])

    request(photos[0])  # the first run loads and allocates
    spent.clear()
    started = time.process_time()
    for data in photos:
        request(data)
    spent["request (all of it)"] = time.process_time() - started
    return {k: round(1000 * v / len(photos), 1) for k, v in sorted(spent.items())}


# --- the run --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": {n: version(n) for n in ("onnxruntime", "torch", "fastai", "gunicorn")},
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = args.model.resolve()
    settings = Settings(
        model_path=model.with_suffix(".pkl"),
        model_dir=model.parent,
        torch_threads=args.model_threads,
        runtime=args.runtime,
        onnx_precision=args.precision,
    )
    served = onnx_model_path(settings) if args.runtime == "onnx" else settings.model_path
    if not served.is_file():
        raise FileNotFoundError(f"{served} does not exist (see model/MODEL.md)")
    crops = spread_test_crops(40, args.data)
    photos = photo_sets(crops, variants=args.variants)
    env = {
        "AGE_RUNTIME": args.runtime,
        "AGE_ONNX_PRECISION": args.precision,
        "AGE_TORCH_THREADS": str(args.model_threads),
        "WEB_CONCURRENCY": str(args.workers),
        "GUNICORN_THREADS": str(args.threads),
    }
    result: dict[str, Any] = {
        "machine": machine(),
        "config": {
            "runtime": args.runtime,
            "precision": args.precision if args.runtime == "onnx" else "float",
            "model": str(served),
            "model_mb": round(served.stat().st_size / 1e6, 1),
            "workers": args.workers,
            "threads": args.threads,
            "model_threads": args.model_threads,
            "preload": args.preload,
            "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
            "photo": f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG",
        },
    }
    tally = Tally()
    log_path = Path(tempfile.mkstemp(prefix="agegroup-bench-", suffix=".log")[1])
    extra = ["--preload"] if args.preload else []
    server = GunicornServer(model.with_suffix(".pkl"), log_path, env, extra)
    try:
        server.start(args.start_timeout)
        if server.request("GET", "/healthz")[0] != 200:
            raise RuntimeError(f"the server has no model:\n{server.log_tail()}")
        result["cold_start_s"] = round(server.cold_start_s, 2)
        result["memory_after_start"] = memory_mb(server.process.pid)
        for photo in (photos["one"][0], photos["five"][0]):  # first requests warm the caches
            tally.post(server, photo, connect(server))
        result["latency_one_face"] = latency(server, photos["one"], args.requests, tally)
        result["latency_five_faces"] = latency(server, photos["five"], args.requests, tally)
        result["memory_mid"] = {**memory_mb(server.process.pid), "predictions": tally.count}
        mixed = [p for pair in zip(photos["one"], photos["five"]) for p in pair]
        result["throughput"] = [
            throughput(server, mixed, clients, args.throughput_requests, tally)
            for clients in (1, 2, 4)
        ]
        conn = connect(server)
        while tally.count < args.total:
            tally.post(server, mixed[tally.count % len(mixed)], conn)
        result["memory_after"] = {**memory_mb(server.process.pid), "predictions": tally.count}
    finally:
        server.stop()
        log_path.unlink(missing_ok=True)
    result["errors"] = tally.errors
    result["predictions"] = tally.count
    result["faces_per_photo_seen"] = round(statistics.fmean(tally.faces), 2) if tally.faces else 0
    result["forward"] = forward_ms(settings, crops, args.forward_repeats)
    result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def table(result: dict[str, Any]) -> str:
    """The results as a markdown table: one line per measurement."""
    config, m = result["config"], result["machine"]
    one, five = result["latency_one_face"], result["latency_five_faces"]
    rows = [
        ("machine", f"{m['nproc']} CPUs, {m['cpu']}, load {m['load_average'][0]}"),
        (
            "server",
            f"{config['runtime']} runtime, {config['workers']} worker x {config['threads']} "
            f"threads, model threads {config['model_threads'] or 'auto'}"
            + (", --preload" if config["preload"] else "")
            + (
                f", MALLOC_ARENA_MAX={config['malloc_arena_max']}"
                if config["malloc_arena_max"]
                else ""
            ),
        ),
        ("model file", f"{Path(config['model']).name} ({config['model_mb']} MB)"),
        ("cold start (to /healthz 200)", f"{result['cold_start_s']:.2f} s"),
        ("peak RSS after start (all procs)", f"{result['memory_after_start']['peak_mb']:.0f} MB"),
        (
            f"peak RSS after {result['memory_after']['predictions']} predictions",
            f"{result['memory_after']['peak_mb']:.0f} MB "
            f"(RSS now {result['memory_after']['rss_mb']:.0f} MB; after "
            f"{result['memory_mid']['predictions']}: {result['memory_mid']['rss_mb']:.0f} MB)",
        ),
        ("1-face photo p50 / p95", f"{one['p50_ms']:.0f} / {one['p95_ms']:.0f} ms"),
        ("5-face photo p50 / p95", f"{five['p50_ms']:.0f} / {five['p95_ms']:.0f} ms"),
        (
            "model forward, 1 / 5 faces",
            f"{result['forward']['one_face_ms']:.1f} / {result['forward']['five_faces_ms']:.1f} ms",
        ),
    ]
    for level in result["throughput"]:
        rows.append((f"throughput, {level['clients']} clients", f"{level['per_s']:.1f} req/s"))
    rows.append(("errors", str(result["errors"])))
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
    return "\n".join(lines)


def print_stages(args: argparse.Namespace) -> int:
    """``--stages``: the CPU time of each step for the one-face and the five-face photos."""
    try:
        crops = spread_test_crops(40, args.data)
    except FileNotFoundError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    photos = photo_sets(crops, variants=args.variants)
    settings = replace(
        Settings.from_env(),
        model_path=args.model,
        model_dir=args.model.parent,
        torch_threads=args.model_threads,
        runtime=args.runtime,
        onnx_precision=args.precision,
    )
    result = {kind: stage_profile(settings, photos[kind]) for kind in ("one", "five")}
    # The detector's own steps (levels, second looks, landmarks, MTCNN) are parts of "detect
    # (all of it)".
    print("| step, CPU ms per photo | 1 face | 5 faces |\n|---|---|---|")
    for step in sorted(set(result["one"]) | set(result["five"])):
        print(f"| {step} | {result['one'].get(step, 0):.1f} | {result['five'].get(step, 0):.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"stages_cpu_ms": result}, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=("onnx", "fastai"), default="onnx")
    parser.add_argument(
        "--precision",
        choices=("float", "int8"),
        default=Settings.from_env().onnx_precision,
        help="the onnx runtime's weights (AGE_ONNX_PRECISION)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=Settings().model_path,
        help="the learner; the onnx runtime serves the .onnx beside it",
    )
    parser.add_argument("--data", type=Path, default=UTKFACE_DIR, help="UTKFace folder")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("GUNICORN_THREADS", 4)))
    parser.add_argument("--model-threads", type=int, default=1, help="0: the runtime decides")
    parser.add_argument("--preload", action="store_true", help="load the app before forking")
    parser.add_argument("--requests", type=int, default=50, help="per latency measurement")
    parser.add_argument("--throughput-requests", type=int, default=40, help="per client level")
    parser.add_argument("--total", type=int, default=200, help="predictions before final memory")
    parser.add_argument("--variants", type=int, default=12, help="different photos per kind")
    parser.add_argument("--forward-repeats", type=int, default=30)
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--stages",
        action="store_true",
        help="only the CPU time of each step (decode, search levels, second looks, landmarks, "
        "MTCNN, crop, model) per photo, in this process",
    )
    args = parser.parse_args(argv)
    if args.stages:
        return print_stages(args)
    try:
        result = run(args)
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
