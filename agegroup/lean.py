"""The lean twin of the exported learner: the same network as ONNX, run by onnxruntime.

A torch + fastai server with a ResNet50 needs well over 512 MB; onnxruntime runs the same
network in a fraction of that. Serving (``OnnxPredictor``) imports neither torch nor fastai;
only ``export_onnx`` (run once, where the learner was trained) does.

    python -m agegroup.lean model/export.pkl          # writes and verifies model/export.onnx

The ONNX file stores every weight that is exactly representable in float16 (all of them for a
learner exported in half precision) as float16 followed by a ``Cast`` to float32: the file is
half the size, and onnxruntime folds the casts away at load time, so inference runs in float32
on bit-identical weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agegroup.calibration import load_calibration
from agegroup.errors import ModelUnavailable
from agegroup.predictor import (
    ModelInfo,
    check_model_path,
    check_vocab,
    file_sha256,
    probabilities_of,
)
from agegroup.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_model_input

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# Tolerance on probabilities between the twin and the learner (the accuracy target).
TOLERANCE = 1e-4

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 1, 1, 3)
_STD = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 1, 1, 3)


def to_batch(faces: Sequence[Image.Image], size: int) -> np.ndarray:
    """Faces -> the normalised float32 NCHW batch fastai builds (ToTensor, /255, Normalize)."""
    pixels = np.stack([np.asarray(to_model_input(face, size), dtype=np.uint8) for face in faces])
    batch = (pixels.astype(np.float32) / np.float32(255.0) - _MEAN) / _STD
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


class OnnxPredictor:
    """``export.onnx`` run by onnxruntime on the CPU; same interface as ``FastaiPredictor``."""

    def __init__(
        self, path: Path, model_dir: Path, threads: int = 0, calibrated: bool = True
    ) -> None:
        resolved = check_model_path(path, model_dir)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(0, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning pool threads would burn a shared host's small CPU share between requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # The arena keeps the largest batch's buffers forever; without it memory stays flat.
        options.enable_cpu_mem_arena = False
        # "Extended" rather than "all": the NCHWc layout pass of "all" keeps a second copy of
        # the ResNet50 weights (+45 MB peak) to save ~5 ms per face; memory is the scarce part.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        try:
            session = ort.InferenceSession(
                str(resolved), options, providers=["CPUExecutionProvider"]
            )
            meta = dict(session.get_modelmeta().custom_metadata_map)
            vocab = json.loads(meta["vocab"])
            input_size = int(meta["input_size"])
        except Exception as exc:
            log.error("loading %s failed: %r", path, exc)
            raise ModelUnavailable(
                f"The model file {path.name} could not be loaded (see the server log)."
            ) from exc
        classes = check_vocab(vocab)
        _check_source(resolved, meta)
        self._session = session
        # The learner the twin was made from (its sha256 is in the twin's metadata).
        self.calibration = (
            load_calibration(resolved, lambda: meta.get("source_sha256", ""), len(classes))
            if calibrated
            else None
        )
        self.info = ModelInfo(
            name=meta.get("agegroup_name", resolved.stem),
            version=meta.get("agegroup_version", "unknown"),
            input_size=input_size,
            classes=classes,
        )

    def predict(self, faces: Sequence[Image.Image]) -> np.ndarray:
        """Preprocess like the learner, run the network, softmax in float64."""
        if not faces:
            return np.zeros((0, len(self.info.classes)), dtype=np.float64)
        batch = to_batch(faces, self.info.input_size)
        (logits,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return probabilities_of(np.asarray(logits, dtype=np.float64), self.calibration)


def _check_source(onnx_path: Path, meta: dict[str, str]) -> None:
    """Refuse a twin made from another ``export.pkl`` than the one beside it (a stale file)."""
    source = onnx_path.with_suffix(".pkl")
    expected = meta.get("source_sha256")
    if expected and source.is_file() and file_sha256(source) != expected:
        raise ModelUnavailable(
            f"{onnx_path.name} was not made from the {source.name} beside it; run "
            f"`python -m agegroup.lean {source}` to rebuild it."
        )


# --- export (needs torch and fastai; never imported by the server) -------------------------


def _store_half(model: Any) -> int:
    """Store float32 weights that fp16 holds exactly as fp16 + Cast; returns how many."""
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if values.size < 16 or not np.array_equal(half.astype(np.float32), values):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, name=f"{name}__fp16"))
        casts.append(
            helper.make_node("Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT, name=name)
        )
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(casts + nodes)
    return len(casts)


def export_onnx(
    pkl_path: Path, onnx_path: Path | None = None, model_dir: Path | None = None
) -> Path:
    """Write the ONNX twin of an exported learner (float32 compute, fp16-stored weights)."""
    import io
    import warnings

    import onnx
    import torch

    from agegroup.predictor import FastaiPredictor

    pkl_path = Path(pkl_path)
    onnx_path = Path(onnx_path) if onnx_path else pkl_path.with_suffix(".onnx")
    reference = FastaiPredictor(
        pkl_path, Path(model_dir) if model_dir else pkl_path.parent, calibrated=False
    )
    network = reference.learn.model.float().eval()
    size = reference.info.input_size
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # PRESERVE keeps BatchNorm apart from Conv (onnxruntime fuses them itself at load), so
        # the weights stay the exact fp16 values of export.pkl and can be stored as fp16.
        torch.onnx.export(
            network,
            (torch.zeros(1, 3, size, size),),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    model = onnx.load_from_string(buffer.getvalue())
    _store_half(model)
    meta = {
        "agegroup_name": reference.info.name,
        "agegroup_version": reference.info.version,
        "vocab": json.dumps([str(v) for v in reference.learn.dls.vocab]),
        "input_size": str(size),
        "mean": json.dumps(IMAGENET_MEAN),
        "std": json.dumps(IMAGENET_STD),
        "source_name": pkl_path.name,
        "source_sha256": file_sha256(pkl_path),
    }
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=onnx_path.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(model.SerializeToString())
    Path(tmp.name).chmod(0o644)
    Path(tmp.name).replace(onnx_path)
    return onnx_path


def compare(
    pkl_path: Path, onnx_path: Path, faces: Sequence[Image.Image], model_dir: Path | None = None
) -> dict[str, float]:
    """Largest probability difference of the twin against ``FastaiPredictor`` and ``predict``.

    ``learn.predict`` gets each face already at the model's size (``to_model_input``), which
    is what the server feeds the network; fastai's own resize of a larger crop differs slightly.
    """
    from agegroup.predictor import FastaiPredictor

    folder = Path(model_dir) if model_dir else Path(pkl_path).parent
    # The networks are compared, before any calibration file is applied to either.
    reference = FastaiPredictor(Path(pkl_path), folder, calibrated=False)
    twin = OnnxPredictor(Path(onnx_path), folder, calibrated=False)
    size = reference.info.input_size
    ours = twin.predict(faces)
    theirs = reference.predict(faces)
    with reference.learn.no_bar():
        own = np.stack(
            [
                reference.learn.predict(to_model_input(face, size))[2].float().numpy()
                for face in faces
            ]
        )
    return {
        "faces": float(len(faces)),
        "max_diff_vs_fastai_predictor": float(np.abs(ours - theirs).max()),
        "max_diff_vs_learn_predict": float(np.abs(ours - own).max()),
        "same_top_bucket": float(np.mean(ours.argmax(1) == own.argmax(1))),
    }


def check_faces(count: int, data_dir: Path | None = None) -> list[Image.Image]:
    """``count`` UTKFace test-split crops (fixed choice); random pictures if the data is absent."""
    from agegroup.training import data as utk

    folder = data_dir or utk.DEFAULT_DATA_DIR
    if utk.image_dir_of(folder).is_dir():
        tests = [s for s in utk.list_samples(folder) if s.is_test]
        step = max(1, len(tests) // max(1, count))
        chosen = tests[::step][:count]
        return [Image.open(utk.image_dir_of(folder) / s.name).convert("RGB") for s in chosen]
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)) for _ in range(count)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the ONNX twin of an exported learner.")
    parser.add_argument("pkl", type=Path, help="the learner, e.g. model/export.pkl")
    parser.add_argument("--out", type=Path, help="default: the .pkl path with .onnx")
    parser.add_argument("--check", type=int, default=50, help="faces to verify (0: skip)")
    parser.add_argument("--data", type=Path, help="UTKFace folder for the check")
    args = parser.parse_args(argv)
    out = export_onnx(args.pkl, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if args.check <= 0:
        return 0
    if out.resolve().parent != args.pkl.resolve().parent:
        print("check skipped: the twin is not in the learner's folder")
        return 0
    result = compare(args.pkl, out, check_faces(args.check, args.data))
    print(json.dumps(result, indent=2))
    if max(result["max_diff_vs_fastai_predictor"], result["max_diff_vs_learn_predict"]) > TOLERANCE:
        print(f"FAILED: the twin differs from the learner by more than {TOLERANCE}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
