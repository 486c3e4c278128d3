"""fastai callbacks of training: bf16 autocast on CPUs and GPUs that have it, and a checkpoint
after every epoch that ``--resume`` continues from."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from fastai.callback.core import Callback


class Bf16Autocast(Callback):
    """Run forward and loss under bf16 autocast on the model's device (CPU with AMX, or a
    GPU), with channels-last inputs."""

    order = 10

    def before_fit(self) -> None:
        self.learn.model.to(memory_format=torch.channels_last)
        self.device_type = next(self.learn.model.parameters()).device.type

    def before_batch(self) -> None:
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) for x in self.xb)
        self.autocast = torch.autocast(self.device_type, dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_loss(self) -> None:
        self.autocast.__exit__(None, None, None)

    def after_cancel_batch(self) -> None:
        if torch.is_autocast_enabled(self.device_type):
            self.autocast.__exit__(None, None, None)


class Checkpoint(Callback):
    """After every epoch: save weights and optimiser as ``last``, and the epochs done so far
    (``--resume`` continues from there). ``offset``: epochs run before this ``fit`` call."""

    def __init__(self, state_file: Path, offset: int = 0) -> None:
        self.state_file = state_file
        self.offset = offset

    def after_epoch(self) -> None:
        self.learn.save("last", with_opt=True)
        done = self.offset + self.epoch + 1
        self.state_file.write_text(json.dumps({"epochs_done": done, "time": time.time()}))
