"""What the detectors' small networks share: one way to open them, and a timing hook.

Every face network (BlazeFace, MTCNN's PNet and RNet, the face check's ONet) runs in an
onnxruntime session made by ``small_network_session``, shared by the server's threads.
``Stages`` is where a detector reports the time of each step when asked to
(``python -m tools.bench --stages``); the server never asks, and it then costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def small_network_session(path: Path, threads: int, name: str) -> Any:
    """An onnxruntime session for a small network the server's threads share; a missing
    ``name`` model file fails loudly."""
    import onnxruntime as ort

    if not path.is_file():
        raise FileNotFoundError(f"no {name} model at {path}")

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, threads)  # 0: onnxruntime decides
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Spinning pool threads would burn a shared host's small CPU share between requests.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Every photo shape is a new input shape: memory patterns would keep a plan for each and
    # grow the process. The arena stays: it keeps one search's buffers (bounded by the pixel
    # budget) for the next instead of mapping them afresh. docs/robustness.md#onnxruntime-memory
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Stages:
    """CPU seconds a detector spends in each named step, summed over calls.

    Off (``spent`` is ``None``) unless a caller hands it a dict to fill: ``tools.bench
    --stages`` does, on a detector of its own. Steps may nest (MTCNN's faces get landmarks too,
    so the landmarks' time counts in both rows).
    """

    def __init__(self) -> None:
        self.spent: dict[str, float] | None = None

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        spent = self.spent
        if spent is None:
            yield
            return
        started = time.process_time()
        try:
            yield
        finally:
            spent[step] = spent.get(step, 0.0) + time.process_time() - started
