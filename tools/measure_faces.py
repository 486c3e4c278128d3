"""Measure face detection and the whole detect-crop-predict pipeline on pasted UTKFace faces.

UTKFace test-split crops (``agegroup.training.data.list_samples``, ``is_test``) are pasted at
several sizes into larger cluttered backgrounds, where the face's position is known. Reports:

* detection recall and false positives per face size (``--compare`` adds OpenCV's Haar cascades);
* per-photo latency p50/p95 with 1 and 5 faces (detect + crop, plus predict with a model);
* peak memory of a process holding the detector, measured in a fresh subprocess;
* with ``--model``: 7-bucket accuracy on the original crops vs. on the pasted photos, with the
  faces aligned by their landmarks and (for comparison) cropped by their boxes only;
* with ``--template N``: where dlib's 5 landmarks sit on N UTKFace training crops, on average
  (``agegroup.crops.LANDMARK_TEMPLATE``).

Run: ``python -m tools.measure_faces --model runs/r50_64/export.pkl --out faces.json``
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from agegroup.analysis import analyze
from agegroup.config import PROJECT_ROOT
from agegroup.faces import DEFAULT_DETECTOR, get_detector, make_detector
from agegroup.images import DecodedImage
from agegroup.predictor import predict_groups
from agegroup.training.data import DEFAULT_DATA_DIR, image_dir_of, list_samples

SCALES = (48, 80, 140, 240)
CANVAS = (800, 600)
Placed = tuple[int, int, int]  # x, y, side of a pasted face


def cluttered_scene(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth colour noise with random shapes: clutter without faces."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(10, w // 3)), y0 + int(rng.integers(10, h // 3))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return image.filter(ImageFilter.GaussianBlur(2))


def paste(faces: list[Image.Image], sides: list[int], size: tuple[int, int], seed: int):
    """Paste ``faces`` at ``sides`` without overlap; returns the photo and the placements."""
    rng = random.Random(seed)
    photo = cluttered_scene(size, seed)
    placed: list[Placed] = []
    for face, side in zip(faces, sides, strict=True):
        for _ in range(200):
            x, y = rng.randint(0, size[0] - side), rng.randint(0, size[1] - side)
            if all(
                x + side <= px or px + ps <= x or y + side <= py or py + ps <= y
                for px, py, ps in placed
            ):
                break
        photo.paste(face.resize((side, side), Image.Resampling.BILINEAR), (x, y))
        placed.append((x, y, side))
    return photo, placed


def matches(box: tuple[int, int, int, int], place: Placed) -> bool:
    """A detection belongs to a pasted face when its centre is inside it and its size fits."""
    bx, by, bw, bh = box
    x, y, side = place
    cx, cy = bx + bw / 2, by + bh / 2
    return x <= cx <= x + side and y <= cy <= y + side and 0.25 * side <= bw <= 1.3 * side


def haar(name: str) -> Callable[[Image.Image], list[tuple[int, int, int, int]]]:
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + f"haarcascade_frontalface_{name}.xml")

    def detect(image: Image.Image) -> list[tuple[int, int, int, int]]:
        gray = cv2.equalizeHist(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY))
        found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(20, 20))
        return [tuple(int(v) for v in b) for b in found]

    return detect


def dlib_hog(image: Image.Image) -> list[tuple[int, int, int, int]]:
    return [(b.x, b.y, b.w, b.h) for b in get_detector().detect(image)]


def measure_detection(samples, image_dir: Path, detectors: dict) -> dict:
    cases = []
    for i, sample in enumerate(samples):
        face = Image.open(image_dir / sample.name).convert("RGB")
        cases.append(paste([face], [SCALES[i % len(SCALES)]], CANVAS, seed=i))
    report = {}
    for name, detect in detectors.items():
        hits = dict.fromkeys(SCALES, 0)
        false_positives, times = 0, []
        for photo, [place] in cases:
            started = time.perf_counter()
            boxes = detect(photo)
            times.append(time.perf_counter() - started)
            hit = [b for b in boxes if matches(b, place)][:1]
            hits[place[2]] += bool(hit)
            false_positives += len(boxes) - len(hit)
        per_scale = len(cases) / len(SCALES)
        report[name] = {
            "photos": len(cases),
            "recall": round(sum(hits.values()) / len(cases), 3),
            "recall_by_face_px": {s: round(h / per_scale, 3) for s, h in hits.items()},
            "false_positives": false_positives,
            "ms_p50": round(1000 * float(np.median(times)), 1),
        }
        print(name, report[name], flush=True)
    return report


class _NoModel:
    """Stands in for a model when none is given: latency is then detect + crop only."""

    def predict(self, faces):
        return np.full((len(faces), 7), 1 / 7)


def measure_latency(samples, image_dir: Path, predictor, photos: int) -> dict:
    report = {}
    for count in (1, 5):
        times = []
        for i in range(photos):
            chosen = samples[i * count : (i + 1) * count]
            faces = [Image.open(image_dir / s.name).convert("RGB") for s in chosen]
            photo, _ = paste(faces, [160] * count, (1280, 960), seed=1000 + i)
            decoded = DecodedImage(photo, photo.width, photo.height, "JPEG")
            started = time.perf_counter()
            analyze(decoded, predictor)
            times.append(time.perf_counter() - started)
        report[f"{count}_face"] = {
            "photo_px": "1280x960",
            "ms_p50": round(1000 * float(np.percentile(times, 50)), 1),
            "ms_p95": round(1000 * float(np.percentile(times, 95)), 1),
        }
        print("latency", count, report[f"{count}_face"], flush=True)
    return report


# VmHWM (peak resident memory) starts afresh at exec, unlike ru_maxrss, which a child inherits.
_MEMORY_PROBE = """
import os
import numpy as np
from PIL import Image
from testsupport.memory import proc_status
def peak_kb():
    return proc_status(os.getpid())["VmHWM"]
before = peak_kb()
from agegroup.faces import get_detector
photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), dtype=np.uint8))
for _ in range(3):
    get_detector().detect(photo)
print(before // 1024, peak_kb() // 1024)
"""


def measure_memory() -> dict:
    probe = [sys.executable, "-c", _MEMORY_PROBE]
    out = subprocess.run(probe, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    out = out.stdout.split()
    before, after = int(out[0]), int(out[1])
    report = {
        "baseline_numpy_pillow_mb": before,
        "with_detector_peak_mb": after,
        "detector_adds_mb": after - before,
    }
    print("memory", report, flush=True)
    return report


def measure_accuracy(samples, image_dir: Path, predictor) -> dict:
    originals = [Image.open(image_dir / s.name).convert("RGB") for s in samples]
    truth = np.array([s.bucket for s in samples])
    direct = np.concatenate(
        [
            predict_groups(predictor, originals[i : i + 64])[0].argmax(1)
            for i in range(0, len(originals), 64)
        ]
    )
    report: dict = {"faces": len(samples), "accuracy_original_crops": acc(direct == truth)}
    sides = (80, 140, 240)
    detectors = {"landmarks": get_detector(), "boxes_only": make_detector(DEFAULT_DETECTOR, "off")}
    for name, detector in detectors.items():
        piped, found = [], []
        for i, face in enumerate(originals):
            photo, [place] = paste([face], [sides[i % len(sides)]], CANVAS, seed=5000 + i)
            decoded = DecodedImage(photo, photo.width, photo.height, "JPEG")
            result = analyze(decoded, predictor, detector=detector)
            hit = [f for f in result.faces if f.box is not None and matches(f.box, place)]
            found.append(bool(hit))
            # Without a match the user sees the first entry (the whole-photo fallback or a
            # wrong box).
            piped.append((hit or result.faces)[0].bucket_index)
        piped_arr, found_arr = np.array(piped), np.array(found)
        report[name] = {
            "accuracy_pipeline_pasted": acc(piped_arr == truth),
            "detected": acc(found_arr),
            "accuracy_original_on_detected": acc((direct == truth)[found_arr]),
            "accuracy_pipeline_on_detected": acc((piped_arr == truth)[found_arr]),
        }
    print("accuracy", report, flush=True)
    return report


def acc(hits: np.ndarray) -> float:
    return round(float(hits.mean()), 4)


def measure_template(samples, image_dir: Path) -> list[list[float]]:
    """Mean landmark positions on UTKFace crops, each pasted into a plain canvas to detect it."""
    points = []
    for sample in samples:
        with Image.open(image_dir / sample.name) as face:
            canvas = Image.new("RGB", (300, 300), (90, 90, 90))
            canvas.paste(face.convert("RGB").resize((200, 200)), (50, 50))
        boxes = get_detector().detect(canvas)
        if boxes and boxes[0].landmarks is not None:
            points.append(np.subtract(boxes[0].landmarks, 50))
    template = np.round(np.mean(points, axis=0), 1).tolist()
    print(f"template from {len(points)} of {len(samples)} crops:", template, flush=True)
    return template


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--count", type=int, default=200, help="test faces for detection")
    parser.add_argument("--latency-photos", type=int, default=20)
    parser.add_argument("--model", type=Path, help="an export.pkl: adds prediction and accuracy")
    parser.add_argument("--accuracy-count", type=int, default=1000)
    parser.add_argument("--compare", action="store_true", help="also measure OpenCV Haar cascades")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--template", type=int, metavar="N", help="only measure the template")
    args = parser.parse_args()

    image_dir = image_dir_of(args.data)
    if args.template:
        train = [s for s in list_samples(args.data) if not s.is_test]
        measure_template(train[::40][: args.template], image_dir)
        return
    test = [s for s in list_samples(args.data) if s.is_test]
    random.Random(0).shuffle(test)
    detectors = {"dlib_hog": dlib_hog}
    if args.compare:
        detectors |= {"haar_default": haar("default"), "haar_alt2": haar("alt2")}
    predictor = _NoModel()
    if args.model:
        from agegroup.predictor import FastaiPredictor

        predictor = FastaiPredictor(args.model, args.model.resolve().parent)
    report = {
        "detection": measure_detection(test[: args.count], image_dir, detectors),
        "latency": measure_latency(test, image_dir, predictor, args.latency_photos),
        "latency_includes_model": bool(args.model),
        "memory": measure_memory(),
    }
    if args.model:
        accuracy_set = test[args.count : args.count + args.accuracy_count]
        report["accuracy"] = measure_accuracy(accuracy_set, image_dir, predictor)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
