"""Memory stress: the worst accepted upload of every format, at 1, 4 and 16 concurrent clients.

One command (on an idle machine, as for any RSS or latency number):

    .venv/bin/python -m tools.stress [--clients 1 4 16] [--rounds 3]

The server starts exactly as on Render: render.yaml's startCommand (the Procfile's, through
``testsupport.server``'s launcher) with render.yaml's environment (AGE_RUNTIME=onnx, one worker,
its thread count, MALLOC_ARENA_MAX=2) and the shipped model. Run it with the Python of a venv
made from requirements-render.txt to measure what Render runs.

Each client sends, in a fixed-seed order, the worst files (small files that decode big:
PNG, WebP, AVIF, GIF, BMP, progressive and baseline JPEG at the largest pixel count this server
accepts for each, a 10 MB noise JPEG, and one just over the limit), each followed by a normal
photo. It reports, per concurrency: peak RSS of the whole server (VmHWM of every process,
reset before the burst), resting RSS before and one second after, status counts, refusals
without Retry-After or a clear message, 5xx and dropped connections, and the latency of the
normal photos. Exit status 1 when a memory check fails (``failures``);
tests/test_memory.py runs a short form.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import struct
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from agegroup.config import PROJECT_ROOT, Settings
from agegroup.image_formats import DecodeCost, decode_cost, open_image
from agegroup.memory_budget import MemoryBudget
from testsupport.memory import memory_mb, proc_status, reset_peaks
from testsupport.server import GunicornServer, render_env, settings_for
from testsupport.uploads import image_bytes, image_form
from tools.bench import percentile, run_clients
from tools.soak import finish_report, probabilities, valid_photos


# --- the worst files, made with fixed patterns ------------------------------------------------
def _stripes(width: int, height: int, period: int = 14) -> Image.Image:
    row = ((np.arange(width) % period) < period // 2).astype(np.uint8) * 255
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(row, (height, width))), "L")


def _vips_stripes(width: int, height: int, bands: int, period: int = 14):  # type: ignore[no-untyped-def]
    import pyvips

    grey = ((pyvips.Image.xyz(width, height)[0] % period) < period // 2).ifthenelse(255, 0)
    grey = grey.cast("uchar")
    return grey.bandjoin([grey] * (bands - 1)) if bands > 1 else grey


def png_rgba(side: int) -> bytes:
    """Stripes with alpha: 200 KB for 50 megapixels, libvips' most expensive PNG."""
    return _vips_stripes(side, side, 4).pngsave_buffer(compression=9)


def png_interlaced(side: int) -> bytes:
    """Adam7 interlacing cannot be streamed: Pillow decodes it whole."""
    return _vips_stripes(side, side, 3).pngsave_buffer(compression=6, interlace=True)


def webp_lossless(side: int) -> bytes:
    return _vips_stripes(side, side, 3).webpsave_buffer(lossless=True, effort=0)


def gif(side: int) -> bytes:
    return image_bytes(_stripes(side, side).convert("P"), "GIF")


def bmp_rle8(side: int) -> bytes:
    """An 8-bit run-length BMP: runs of 255 pixels, a few hundred KB for 50 megapixels."""
    row = bytearray()
    for start in range(0, side, 255):
        row += bytes((min(255, side - start), (start // 255) % 2 * 255))
    row += b"\0\0"
    pixels = bytes(row) * side + b"\0\1"
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    head = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return head + info + palette + pixels


def avif_deep(side: int) -> bytes:
    """12-bit 4:4:4 AVIF with alpha: libavif's deepest planes, then an RGBA frame."""
    stripes = _vips_stripes(side, side, 4)
    return stripes.heifsave_buffer(compression="av1", bitdepth=12, subsample_mode="off", effort=0)


def jpeg_progressive(side: int) -> bytes:
    """A progressive JPEG keeps every coefficient of the full image, whatever the draft."""
    return _vips_stripes(side, side, 3, period=256).jpegsave_buffer(Q=70, interlace=True)


def jpeg_baseline(side: int) -> bytes:
    return _vips_stripes(side, side, 3, period=256).jpegsave_buffer(Q=70)


def noise_jpeg(max_bytes: int, seed: int = 0) -> bytes:
    """The biggest upload: a noise photo just under the size limit."""
    rng = np.random.default_rng(seed)
    side, best = 2000, b""
    for _ in range(6):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        data = image_bytes(Image.fromarray(pixels), "JPEG", quality=85)
        if len(best) < len(data) <= max_bytes:
            best = data
        if 0.95 * max_bytes <= len(best):
            break
        side = int(side * math.sqrt(0.98 * max_bytes / len(data)))
    return best


WORST: dict[str, Callable[[int], bytes]] = {
    "png_rgba": png_rgba,
    "png_interlaced": png_interlaced,
    "webp_lossless": webp_lossless,
    "avif_deep": avif_deep,
    "gif": gif,
    "bmp_rle8": bmp_rle8,
    "jpeg_progressive": jpeg_progressive,
    "jpeg_baseline": jpeg_baseline,
}


def _cost(data: bytes, settings: Settings) -> DecodeCost:
    """What the server will estimate for this upload (its header read the same way)."""
    image = open_image(data)
    if image.format == "JPEG":
        image._size_before_draft = image.size  # type: ignore[attr-defined]
        image.draft("RGB", (settings.work_size, settings.work_size))
    return decode_cost(image, len(data), settings.work_size)


def largest_accepted(make: Callable[[int], bytes], settings: Settings) -> tuple[int, bytes]:
    """The biggest square of this kind that the server accepts (within 2% of its side).

    Each try aims where the server's estimate for the last size puts the limit. The estimate's
    slope differs below and above the work size, so when that aim lands within 2% of a size
    already tried, the next is where a straight line between the costs of the largest size that
    fits and the smallest that does not (in pixels) crosses the limit."""
    largest = MemoryBudget(settings.decode_budget_bytes).largest
    fits: tuple[int, int] | None = None  # (side, cost) of the largest size that fits
    fails: tuple[int, int] | None = None  # (side, cost) of the smallest that does not
    side, best = 1024, None
    for _ in range(12):
        data = make(side)
        cost = _cost(data, settings)
        aim = math.isqrt(min(settings.max_pixels, cost.pixel_limit(largest)))
        if cost.bytes <= largest and side * side <= settings.max_pixels:
            fits, best = (side, cost.bytes), (side, data)
            if aim <= side * 1.02:
                break  # the estimate says this is the limit, within 2%
        else:
            fails = (side, cost.bytes)
        if fits is None or fails is None:
            side = aim
            continue
        (low, low_cost), (high, high_cost) = fits, fails
        if high <= low * 1.02:
            break
        if not low * 1.02 < aim < high / 1.02:
            pixels = low * low + (largest - low_cost) * (high * high - low * low) / max(
                1, high_cost - low_cost
            )
            aim = min(max(math.isqrt(int(pixels)), low + 1), high - 1)
        side = aim
    if best is None:
        raise RuntimeError(f"{make.__name__}: no size fits the budget")
    return best


def worst_files(settings: Settings, seed: int = 0) -> list[tuple[str, bytes, set[int]]]:
    """``(name, bytes, statuses it may get)``: every kind at its limit, the size limit, and one
    file just over the pixel limit."""
    files = []
    for name, make in WORST.items():
        side, data = largest_accepted(make, settings)
        files.append((f"{name} {side}x{side}", data, {200, 503}))
    files.append(
        ("noise jpeg at the size limit", noise_jpeg(settings.max_upload_bytes, seed), {200, 503})
    )
    over = math.isqrt(settings.max_pixels) + 1
    files.append((f"png {over}x{over} over the limit", png_rgba(over), {413}))
    return files


# --- what one decode costs, in a fresh process ------------------------------------------------
def _measure_here(decoder: str, sides: dict[str, int], work_size: int) -> dict[str, list[int]]:
    """``{kind: [peak RSS growth, estimate]}`` in bytes, decoding each kind in turn here."""
    from agegroup import image_formats, images, memory_budget

    if decoder == "pillow":
        image_formats.pyvips = None
    settings = Settings(work_size=work_size)
    out = {}
    for name, side in sides.items():
        data = WORST[name](side)
        estimate = _cost(data, settings).bytes
        memory_budget.release_memory()
        reset_peaks(os.getpid())  # VmHWM starts again from VmRSS
        before = proc_status(os.getpid())["VmRSS"]
        images.decode_upload(data, 10**9, work_size)
        out[name] = [(proc_status(os.getpid())["VmHWM"] - before) * 1024, estimate]
    return out


def decode_peaks(decoder: str, sides: dict[str, int], work_size: int = 1600) -> dict:
    """Peak memory of decoding each worst kind (``pillow`` or ``vips``), in a fresh process."""
    import subprocess

    command = [sys.executable, "-m", "tools.stress", "--measure-decode", decoder, json.dumps(sides)]
    command += ["--work-size", str(work_size)]
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=600
    )
    return json.loads(done.stdout.splitlines()[-1])


# --- measuring ---------------------------------------------------------------------------------
def server_mb(root: int) -> tuple[float, float]:
    """(RSS, peak RSS since the last reset) summed over the server's processes, in MB."""
    memory = memory_mb(root)
    return memory["rss_mb"], memory["peak_mb"]


def timed_post(server: GunicornServer, data: bytes) -> tuple[int, dict[str, str], bytes, float]:
    """One upload on its own connection: status, headers, body and seconds taken."""
    started = time.perf_counter()
    status, headers, body = server.request("POST", "/api/predict", image_form(data), timeout=120)
    return status, headers, body, time.perf_counter() - started


def burst(
    server: GunicornServer,
    clients: int,
    worst: list[tuple[str, bytes, set[int]]],
    photos: list[bytes],
    alone: list[list[list[float]]],
    rounds: int,
    seed: int,
    per_client: int | None = None,
) -> dict:
    """``clients`` threads, each sending every worst file ``rounds`` times (or ``per_client`` of
    them, in turn), a normal photo after each."""
    root = server.process.pid  # type: ignore[union-attr]
    statuses: Counter = Counter()
    problems: list[str] = []
    latencies: list[float] = []
    dropped = [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        plan = [w for _ in range(rounds) for w in worst]
        if per_client is not None:
            plan = [worst[(index * per_client + k) % len(worst)] for k in range(per_client)]
        rng.shuffle(plan)
        for name, data, allowed in plan:
            which = rng.randrange(len(photos))
            for kind, body in (("worst", data), ("photo", photos[which])):
                try:
                    status, headers, answer, seconds = timed_post(server, body)
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        dropped[0] += 1
                        problems.append(f"{kind} {name}: {type(exc).__name__}")
                    continue
                with lock:
                    statuses[status] += 1
                    problems.extend(_check(kind, name, status, headers, answer, allowed))
                    if kind == "photo":
                        latencies.append(seconds)
                        if status == 200 and probabilities(answer) != alone[which]:
                            diff = np.max(np.abs(np.subtract(probabilities(answer), alone[which])))
                            if diff > 1e-6:
                                problems.append(f"photo {which} differs by {diff:.1e}")

    before, _ = server_mb(root)
    reset_peaks(root)
    seconds = run_clients(client, clients)
    _, peak = server_mb(root)
    time.sleep(1.0)
    after, _ = server_mb(root)
    return {
        "clients": clients,
        "requests": sum(statuses.values()) + dropped[0],
        "seconds": round(seconds, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors": sum(v for k, v in statuses.items() if k >= 500 and k != 503),
        "dropped_connections": dropped[0],
        "problems": problems[:20],
        "problem_count": len(problems),
        "photo_latency_s": {
            "count": len(latencies),
            "p50": round(percentile(latencies, 50), 2) if latencies else None,
            "p95": round(percentile(latencies, 95), 2) if latencies else None,
            "max": round(max(latencies), 2) if latencies else None,
        },
        "rss_mb": {
            "before": round(before, 1),
            "peak": round(peak, 1),
            "one_second_after": round(after, 1),
        },
    }


def _check(kind: str, name: str, status: int, headers: dict, answer: bytes, allowed: set) -> list:
    """What is wrong with one answer (empty when it is right)."""
    if kind == "photo":
        return [] if status == 200 else [f"a normal photo got {status}"]
    wrong = [] if status in allowed else [f"{name}: {status}, expected {sorted(allowed)}"]
    if status != 200:
        try:
            error = json.loads(answer)["error"]
            if not (error["code"] and error["message"]):
                raise KeyError("message")
        except (ValueError, KeyError, TypeError):
            wrong.append(f"{name}: {status} without a JSON error message")
    if status == 503 and not headers.get("Retry-After", "").isdigit():
        wrong.append(f"{name}: 503 without Retry-After")
    return wrong


def run_stress(
    server: GunicornServer,
    settings: Settings,
    concurrency: list[int],
    rounds: int = 2,
    photo_count: int = 8,
    seed: int = 0,
    per_client: int | None = None,
) -> dict:
    """Every burst in turn, after a warm-up pass of the normal photos and of each worst file."""
    made = time.monotonic()
    worst = worst_files(settings, seed)
    files = {name: len(data) for name, data, _ in worst}
    made = time.monotonic() - made
    photos = valid_photos(photo_count, seed)
    alone = []
    for photo in photos:
        status, _, body, _ = timed_post(server, photo)
        if status != 200:
            raise RuntimeError(f"a normal photo got {status} when sent alone")
        alone.append(probabilities(body))
    # Each worst file once, alone, so that what the server builds on first use (the arenas of
    # a photo at the pixel budget, the fallback detectors) is in the resting figure: growth
    # after a burst then means memory a burst kept, not memory any first big photo takes.
    for name, data, allowed in worst:
        status, headers, body, _ = timed_post(server, data)
        wrong = _check("worst", name, status, headers, body, allowed)
        if wrong:
            raise RuntimeError(f"sent alone, {wrong[0]}")
    resting, _ = server_mb(server.process.pid)  # type: ignore[union-attr]
    bursts = [burst(server, c, worst, photos, alone, rounds, seed, per_client) for c in concurrency]
    return {
        "settings": {
            "decode_budget_mb": settings.decode_budget_mb,
            "max_pixels": settings.max_pixels,
            "max_upload_mb": settings.max_upload_mb,
        },
        "worst_files_bytes": files,
        "seconds_to_make_files": round(made, 1),
        "resting_rss_mb": round(resting, 1),
        "bursts": bursts,
    }


def failures(
    report: dict, max_peak_mb: float = 450, max_rest_growth_mb: float = 50, max_p95_s: float = 5.0
) -> list[str]:
    """The memory checks (peak, rest after the burst, normal photos' p95); empty when all hold."""
    found = []
    for b in report["bursts"]:
        at = f"{b['clients']} clients"
        rss = b["rss_mb"]
        if rss["peak"] > max_peak_mb:
            found.append(f"{at}: peak RSS {rss['peak']} MB > {max_peak_mb}")
        if rss["one_second_after"] - rss["before"] > max_rest_growth_mb:
            found.append(f"{at}: RSS {rss['one_second_after']} MB after, {rss['before']} before")
        if b["server_errors"] or b["dropped_connections"]:
            found.append(f"{at}: {b['server_errors']} 5xx, {b['dropped_connections']} dropped")
        if b["problem_count"]:
            found.append(f"{at}: {b['problem_count']} wrong answers: {b['problems'][:3]}")
        p95 = b["photo_latency_s"]["p95"]
        if p95 is not None and p95 > max_p95_s:
            found.append(f"{at}: normal photos p95 {p95} s > {max_p95_s}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=2, help="each worst file per client")
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=Settings().model_path)
    parser.add_argument("--max-peak-mb", type=float, default=450)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument(
        "--calibrate",
        type=int,
        metavar="SIDE",
        help="instead: peak memory of decoding each kind at SIDE x SIDE, Pillow and libvips",
    )
    parser.add_argument("--measure-decode", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--work-size", type=int, default=1600, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_decode:
        decoder, sides = args.measure_decode
        print(json.dumps(_measure_here(decoder, json.loads(sides), args.work_size)))
        return 0
    if args.calibrate:
        sides = {name: args.calibrate for name in WORST}
        table = {d: decode_peaks(d, sides) for d in ("pillow", "vips")}
        for name in WORST:
            row = [f"{table[d][name][i] / 2**20:6.0f}" for d in table for i in (0, 1)]
            print(
                f"{name:18s} pillow peak/estimate {row[0]} /{row[1]} MB   vips {row[2]} /{row[3]}"
            )
        return 0

    env = render_env()
    settings = settings_for(env)
    with tempfile.TemporaryDirectory(prefix="stress-") as scratch:
        log = Path(scratch) / "gunicorn.log"
        with GunicornServer(args.model.resolve(), log, env) as server:
            report = run_stress(server, settings, args.clients, args.rounds, args.photos, args.seed)
            report["server_log_errors"] = server.log_errors()
    report["python"] = sys.executable
    report["render_env"] = env
    return finish_report(report, failures(report, args.max_peak_mb), args.out)


if __name__ == "__main__":
    sys.exit(main())
