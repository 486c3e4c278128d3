"""Convert MTCNN's output network (ONet, MIT, from ``facenet-pytorch``) once to ONNX.

The app asks ONet for a second opinion on the faces BlazeFace is not sure of
(``agegroup.face_check``): its face probability, for a 48 x 48 RGB input. This script exports
that one output with a free batch size and checks onnxruntime's answers against torch's.

Run it where torch is installed (the training venv), not on the server::

    .venv/bin/pip install --no-deps facenet-pytorch==2.6.0
    .venv/bin/python -m tools.convert_onet --out model/onet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from agegroup.face_check import INPUT_SIDE, MODEL_FILE


def face_probability_network():  # noqa: ANN201 (torch is imported here only)
    """ONet with facenet-pytorch's weights, returning only the probability of a face."""
    import torch
    from facenet_pytorch.models.mtcnn import ONet

    class FaceProbability(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.onet = ONet(pretrained=True).eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.onet(x)[2][:, 1]

    return FaceProbability().eval()


def main() -> int:
    import onnxruntime as ort
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("model/onet"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    network = face_probability_network()
    out = args.out / MODEL_FILE
    example = torch.zeros(1, 3, INPUT_SIDE, INPUT_SIDE)
    torch.onnx.export(
        network,
        (example,),
        str(out),
        input_names=["input"],
        output_names=["face_probability"],
        dynamic_axes={"input": {0: "batch"}, "face_probability": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3, INPUT_SIDE, INPUT_SIDE)).astype(np.float32)
    with torch.no_grad():
        expected = network(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(out)).run(None, {"input": x})[0]
    difference = float(np.abs(expected - got).max())
    print(f"wrote {out}: largest difference to torch on 8 random inputs {difference:.1e}")
    assert difference < 1e-5
    return 0


if __name__ == "__main__":
    sys.exit(main())
