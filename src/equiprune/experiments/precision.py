"""Mixed precision for the training loop: forward and backward under autocast, in bf16 (no loss
scaling needed) or fp16 (with torch's dynamic gradient scaler). Weights, gates and every method's
own update stay fp32: autocast only lowers the precision of the operations it knows to be safe."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn

from equiprune.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16", "mixed")


def autocast_dtype(setting: str | None, device: torch.device) -> torch.dtype | None:
    """The dtype autocast lowers to for ``train.precision = setting`` on ``device`` (None: fp32)."""
    if setting in (None, "fp32"):
        return None
    if setting not in PRECISIONS:
        raise ConfigError(f"train.precision: got {setting!r}, expected one of {list(PRECISIONS)}")
    bf16 = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if setting == "bf16" and not bf16:
        raise ConfigError(f"train.precision = 'bf16': {torch.cuda.get_device_name(device)} has no bfloat16; "
                          "use 'fp16' or 'mixed' (which picks fp16 here)")  # fmt: skip
    if setting == "mixed":
        return torch.bfloat16 if bf16 else torch.float16
    return torch.bfloat16 if setting == "bf16" else torch.float16


class Precision:
    """How one run computes its steps: ``autocast()`` around forward and loss, ``backward(loss)``,
    then ``step(opt, model)``, which returns False for a step the fp16 scaler skipped (a gradient
    overflowed), in which case nothing else must read this step's gradients."""

    def __init__(self, setting: str | None, device: torch.device):
        self.device = device
        self.dtype = autocast_dtype(setting, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        return nullcontext() if self.dtype is None else torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, opt: torch.optim.Optimizer, model: nn.Module) -> bool:
        if self.scaler is None:
            opt.step()
            return True
        self.scaler.unscale_(opt)
        # gradients the optimizer does not own (the gates a method updates itself) unscaled as well
        owned = {id(p) for group in opt.param_groups for p in group["params"]}
        scale = self.scaler.get_scale()  # a device sync: read once
        for p in model.parameters():
            if p.grad is not None and id(p) not in owned:
                p.grad.mul_(1.0 / scale)
        self.scaler.step(opt)
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # the scale backs off only after an overflow

    def state_dict(self) -> dict | None:
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
