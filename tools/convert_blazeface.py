"""Convert MediaPipe's BlazeFace detectors (TFLite, Apache-2.0) once to ONNX for onnxruntime.

The ``.tflite`` files come from the npm package ``@mediapipe/face_detection`` (0.4.1657300184);
``tflite2onnx`` turns them into ONNX, and this script then makes the input's height and width
free (the network is convolutional: a whole photo goes through in one run instead of 192 x 192
tiles) by replacing the fixed output sizes of the full-range model's upsampling with a factor
of 2. It checks the result against the TFLite interpreter (``ai-edge-litert``) when that is
installed, and always against the unpatched ONNX at the original input size.

Run it where the converters are installed, not on the server (they are not requirements)::

    python -m venv /tmp/conv && /tmp/conv/bin/pip install tflite2onnx ai-edge-litert onnxruntime
    (cd /tmp && npm pack @mediapipe/face_detection@0.4.1657300184 && tar xzf mediapipe-*.tgz)
    /tmp/conv/bin/python -m tools.convert_blazeface /tmp/package --out model/blazeface
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MODELS = {"face_detection_full_range": 192, "face_detection_short_range": 128}


def make_size_free(model_path: Path, out: Path) -> None:
    """Free the input's height and width; upsample by 2 instead of to a fixed size."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(model_path)
    graph = model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in graph.output:
        for dim in output.type.tensor_type.shape.dim[1:2]:
            dim.dim_param = "anchors"
    del graph.value_info[:]
    graph.initializer.append(
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "upsample_by_2")
    )
    for node in graph.node:
        if node.op_type == "Resize":  # inputs X, roi, scales, sizes -> X, roi, scales = 2
            x, roi = node.input[0], node.input[1]
            del node.input[:]
            node.input.extend([x, roi, "upsample_by_2"])
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    onnx.checker.check_model(model)
    onnx.save(model, out)


def check(tflite: Path, plain: Path, free: Path, size: int) -> None:
    """The size-free model gives the converted (and, if installed, TFLite) outputs."""
    import onnxruntime as ort

    x = np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    expected = ort.InferenceSession(plain).run(None, {"input": nchw})
    got = ort.InferenceSession(free).run(None, {"input": nchw})
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape and np.abs(e - g).max() < 1e-4, "size-free model differs"
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        print("ai-edge-litert not installed: not compared with TFLite")
        return
    interpreter = Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    for detail in interpreter.get_output_details():
        reference = interpreter.get_tensor(detail["index"])
        [match] = [g for g in got if g.shape == reference.shape]
        difference = float(np.abs(match - reference).max())
        print(f"{tflite.name} {detail['name']}: max difference to TFLite {difference:.1e}")
        assert difference < 1e-3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="the unpacked npm package folder")
    parser.add_argument("--out", type=Path, default=Path("model/blazeface"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, size in MODELS.items():
        tflite = args.package / f"{name}.tflite"
        with tempfile.TemporaryDirectory() as tmp:
            plain = Path(tmp) / f"{name}.onnx"
            tool = Path(sys.executable).parent / "tflite2onnx"
            subprocess.run([str(tool), str(tflite), str(plain)], check=True)
            out = args.out / f"{name}.onnx"
            make_size_free(plain, out)
            check(tflite, plain, out, size)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
