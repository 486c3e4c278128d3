"""Convert MTCNN's three networks (MIT, from ``facenet-pytorch``) once to ONNX.

The app runs them with onnxruntime, without torch (``agegroup/mtcnn.py``): the proposal network
(PNet, fully convolutional: any input size) and the refinement network (RNet, 24 x 24 inputs)
find the small and grey faces BlazeFace misses, and the output network (ONet, 48 x 48) gives
the face probability that both the MTCNN search and the face check (``agegroup.face_check``)
judge by. Each is exported with free sizes and checked against torch's answers.

Run it where torch is installed (the training venv), not on the server::

    .venv/bin/pip install --no-deps facenet-pytorch==2.6.0
    .venv/bin/python -m tools.convert_mtcnn --out model/mtcnn
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from agegroup.face_check import INPUT_SIDE, MODEL_FILE
from agegroup.mtcnn import PNET_FILE, RNET_FILE, RNET_SIDE


def networks() -> dict[str, tuple]:
    """The three networks with facenet-pytorch's weights, returning only what the app reads:
    ``(module to export, facenet-pytorch's own, example input shape, outputs, dynamic axes)``.
    """
    import torch
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    class OffsetsAndProbability(torch.nn.Module):
        """RNet (per 24 x 24 crop): offsets (n, 4), probability (n,)."""

        def __init__(self, network: torch.nn.Module) -> None:
            super().__init__()
            self.network = network.eval()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            offsets, probabilities = self.network(x)
            return offsets, probabilities[:, 1]

    class FastPNet(torch.nn.Module):
        """PNet (per 12 px window): offsets (1, 4, h, w), probability (1, h, w); the same
        answers as facenet-pytorch's forward in a third less time (onnxruntime, one thread).

        Two rewrites, both exact. The first PReLU, the costliest step (it runs on every input
        pixel, and onnxruntime cannot fuse a per-channel PReLU into the convolution), runs after
        the 2 x 2 max pooling, on a quarter of the pixels: a PReLU is decreasing then increasing,
        so its largest value over a window is at the window's largest or smallest input. And
        the two-class softmax is the sigmoid of the logits' difference, one convolution
        onnxruntime fuses with it.
        """

        def __init__(self) -> None:
            super().__init__()
            self.network = PNet(pretrained=True).eval()
            weight, bias = self.network.conv4_1.weight.detach(), self.network.conv4_1.bias.detach()
            self.face_logit = torch.nn.Conv2d(weight.shape[1], 1, 1)
            self.face_logit.weight.data = (weight[1] - weight[0])[None]
            self.face_logit.bias.data = (bias[1] - bias[0])[None]

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            n = self.network
            features = n.conv1(x)
            x = torch.maximum(n.prelu1(n.pool1(features)), n.prelu1(-n.pool1(-features)))
            x = n.prelu3(n.conv3(n.prelu2(n.conv2(x))))
            return n.conv4_2(x), torch.sigmoid(self.face_logit(x))[:, 0]

    class FaceProbability(torch.nn.Module):
        """ONet: face probability (n,) per 48 x 48 crop."""

        def __init__(self) -> None:
            super().__init__()
            self.onet = ONet(pretrained=True).eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.onet(x)[2][:, 1]

    free = {0: "batch"}
    return {
        PNET_FILE: (
            FastPNet().eval(),
            OffsetsAndProbability(PNet(pretrained=True)).eval(),
            (1, 3, 60, 84),
            ["offsets", "face_probability"],
            {
                "input": {2: "height", 3: "width"},
                "offsets": {2: "h", 3: "w"},
                "face_probability": {1: "h", 2: "w"},
            },
        ),  # fmt: skip
        RNET_FILE: (
            OffsetsAndProbability(RNet(pretrained=True)).eval(),
            None,
            (8, 3, RNET_SIDE, RNET_SIDE),
            ["offsets", "face_probability"],
            {"input": free, "offsets": free, "face_probability": free},
        ),
        MODEL_FILE: (
            FaceProbability().eval(),
            None,
            (8, 3, INPUT_SIDE, INPUT_SIDE),
            ["face_probability"],
            {"input": free, "face_probability": free},
        ),
    }


def main() -> int:
    import onnxruntime as ort
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("model/mtcnn"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (network, reference, shape, outputs, axes) in networks().items():
        out = args.out / name
        torch.onnx.export(
            network,
            (torch.zeros(shape),),
            str(out),
            input_names=["input"],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
        # PNet is checked on odd sides too, where its pooling has ragged edges.
        check_shape = (*shape[:2], 61, 87) if name == PNET_FILE else shape
        x = np.random.default_rng(0).uniform(-1, 1, check_shape).astype(np.float32)
        with torch.no_grad():
            expected = (reference or network)(torch.from_numpy(x))
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = ort.InferenceSession(str(out)).run(None, {"input": x})
        difference = max(
            float(np.abs(e.numpy() - g).max()) for e, g in zip(expected, got, strict=True)
        )
        print(
            f"wrote {out}: largest difference to facenet-pytorch on a random input {difference:.1e}"
        )
        assert difference < 1e-5
    return 0


if __name__ == "__main__":
    sys.exit(main())
