"""The int8 twin: the ONNX twin with static int8 quantization, checked on the whole test split.

    python -m agegroup.training.quantize model/export.onnx

writes ``model/export.int8.onnx`` (served with ``AGE_ONNX_PRECISION=int8``) and refuses to keep
it unless its served (calibrated, flip-averaged) accuracy on the clean test split is within
``--tolerance`` points of the float twin's.

How: onnxruntime's basic graph optimisation first folds the float16 weight casts and the batch
norms into the convolutions; then ``quantize_static`` (QDQ format, per-channel int8 weights,
uint8 activations with ranges from ``--calibration`` training-split faces, never test faces)
quantizes every convolution and matrix product. Weights use 7 of their 8 bits
(``reduce_range``): CPUs without VNNI (AVX2 only) multiply uint8 by int8 in pairs summed into
int16, which saturates with full-range weights; with the full range, the groups of one test
face in ten changed. The two batch norms of fastai's head stay in float.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from agegroup.ages import to_groups
from agegroup.onnx_runtime import INPUT_NAME, OnnxPredictor, int8_path_of, to_batch
from agegroup.training import data as utk
from agegroup.training.evaluate import predict_faces, score, test_faces
from agegroup.training.learner import training_split

SEED = 42


class FaceBatches(CalibrationDataReader):
    """Training-split faces, one normalised batch of one at a time, as the runtime feeds them."""

    def __init__(self, faces: np.ndarray, size: int) -> None:
        self._batches = iter([to_batch([Image.fromarray(face)], size) for face in faces])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize(twin: Path, out: Path, calibration_faces: np.ndarray, size: int) -> Path:
    """Write the int8 version of ``twin`` to ``out``, with the twin's metadata."""
    with tempfile.TemporaryDirectory() as tmp:
        fused = Path(tmp) / "fused.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(fused)
        ort.InferenceSession(str(twin), options, providers=["CPUExecutionProvider"])
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(
            str(fused), str(prepared), skip_optimization=True, skip_symbolic_shape=True
        )
        nodes = onnx.load(str(prepared)).graph.node
        quantize_static(
            str(prepared),
            str(out),
            FaceBatches(calibration_faces, size),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=[n.name for n in nodes if n.op_type == "BatchNormalization"],
        )
    model = onnx.load(str(out))
    source = onnx.load(str(twin), load_external_data=False)
    onnx.helper.set_model_props(
        model,
        {
            **{p.key: p.value for p in source.metadata_props},
            "precision": "int8",
            "calibration_faces": str(len(calibration_faces)),
        },
    )
    onnx.save(model, str(out))
    return out


def check(twin: Path, quantized: Path, data_dir: Path, limit: int | None) -> dict[str, object]:
    """Both twins, served as the app serves them, on the clean test split."""
    samples = [s for s in utk.list_samples(data_dir) if s.is_test][:limit]
    faces = test_faces(samples, data_dir, "clean")
    report: dict[str, object] = {"test_faces": len(samples)}
    groups = {}
    for name, path in (("float", twin), ("int8", quantized)):
        predictor = OnnxPredictor(path, path.parent, threads=1)
        started = time.perf_counter()
        plain, flipped = predict_faces(predictor, faces)
        served = (plain + flipped) / 2
        metrics = score(samples, served, predictor.info.classes)
        groups[name] = to_groups(served, predictor.info.classes).argmax(1)
        report[name] = {
            "accuracy": metrics["accuracy"],
            "balanced_accuracy": metrics["balanced_accuracy"],
            "within_one_bucket": metrics["within_one_bucket"],
            "seconds": round(time.perf_counter() - started, 1),
        }
    report["same_group"] = float(np.mean(groups["float"] == groups["int8"]))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("twin", type=Path, help="the float ONNX twin, e.g. model/export.onnx")
    parser.add_argument("--data", type=Path, default=utk.DEFAULT_DATA_DIR)
    parser.add_argument("--cache", type=Path, default=Path("data-cache"))
    parser.add_argument("--calibration", type=int, default=256, help="training-split faces")
    parser.add_argument("--tolerance", type=float, default=0.5, help="accuracy points")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test faces")
    args = parser.parse_args(argv)

    size = OnnxPredictor(args.twin, args.twin.parent, calibrated=False).info.input_size
    images, _, _ = training_split(args.data, size, args.cache)
    rng = np.random.default_rng(SEED)
    chosen = images[rng.choice(len(images), args.calibration, replace=False)]
    out = quantize(args.twin, int8_path_of(args.twin), chosen, size)
    report = check(args.twin, out, args.data, args.limit)
    gap = 100 * (report["float"]["accuracy"] - report["int8"]["accuracy"])  # type: ignore[index]
    report["accuracy_gap_points"] = round(gap, 2)
    report_path = out.with_name(out.stem + ".check.json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if abs(gap) > args.tolerance:
        out.unlink()
        print(f"int8 accuracy differs by {gap:.2f} points (> {args.tolerance}): removed {out}")
        return 1
    print(f"wrote {out} and {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
