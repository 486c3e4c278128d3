"""Write the ONNX twin of an exported learner and check it against the learner.

    python -m agegroup.training.onnx_export model/export.pkl   # writes and verifies export.onnx

The ONNX file stores every weight that is exactly representable in float16 (all of them for a
learner exported in half precision) as float16 followed by a ``Cast`` to float32: the file is
half the size, and onnxruntime folds the casts away at load time, so inference runs in float32
on bit-identical weights. Needs torch, fastai and onnx; the server never imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agegroup.onnx_runtime import INPUT_NAME, OUTPUT_NAME, OnnxPredictor
from agegroup.predictor import file_sha256
from agegroup.preprocess import IMAGENET_MEAN, IMAGENET_STD, to_model_input
from agegroup.training.data import DEFAULT_DATA_DIR, spread_test_crops

OPSET = 17
# Tolerance on probabilities between the twin and the learner (the accuracy target).
TOLERANCE = 1e-4


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the ONNX twin of an exported learner.")
    parser.add_argument("pkl", type=Path, help="the learner, e.g. model/export.pkl")
    parser.add_argument("--out", type=Path, help="default: the .pkl path with .onnx")
    parser.add_argument("--check", type=int, default=50, help="faces to verify (0: skip)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="UTKFace folder")
    args = parser.parse_args(argv)
    out = export_onnx(args.pkl, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if args.check <= 0:
        return 0
    if out.resolve().parent != args.pkl.resolve().parent:
        print("check skipped: the twin is not in the learner's folder")
        return 0
    try:
        faces = spread_test_crops(args.check, args.data)
    except FileNotFoundError as exc:
        print(f"check not run: {exc} (or --check 0 to skip it)", file=sys.stderr)
        return 2
    result = compare(args.pkl, out, faces)
    print(json.dumps(result, indent=2))
    if max(result["max_diff_vs_fastai_predictor"], result["max_diff_vs_learn_predict"]) > TOLERANCE:
        print(f"FAILED: the twin differs from the learner by more than {TOLERANCE}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
