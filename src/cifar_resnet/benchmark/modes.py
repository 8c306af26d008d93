"""How our step runs: ``Mode`` names the trainer's runtime switches (compile, bf16, channels_last,
CUDA graphs), and whether a mode runs on a device is the trainer's own decision
(``runtime.Runtime``'s ``not_applied``): a mode with a switch that does not act there would time another mode
under its name. Importing this module imports no torch: the command line's options name the modes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FLAGS = ("bf16", "channels_last", "cuda_graphs")  # what follows eager or compile in a mode's name


@dataclass(frozen=True)
class Mode:
    """How our step runs; named like ``compile+bf16+channels_last+cuda_graphs`` (``eager`` alone is fp32
    NCHW). CUDA graphs come from torch.compile(mode="reduce-overhead"), so they need ``compile``."""

    compile: bool = False
    bf16: bool = False
    channels_last: bool = False
    cuda_graphs: bool = False

    @classmethod
    def parse(cls, name: str) -> Mode:
        first, *flags = name.split("+")
        if first not in ("eager", "compile") or not set(flags) <= set(FLAGS) or len(set(flags)) < len(flags):
            raise ValueError(f"mode {name!r} is not eager or compile followed by +flags from {FLAGS}")
        mode = cls(compile=first == "compile", **{flag: True for flag in flags})
        if mode.cuda_graphs and not mode.compile:
            raise ValueError(
                f"mode {name!r}: CUDA graphs come from torch.compile, write compile+...+cuda_graphs"
            )
        return mode

    @property
    def name(self) -> str:
        flags = [flag for flag in FLAGS if getattr(self, flag)]
        return "+".join(["compile" if self.compile else "eager", *flags])

    def switches(self) -> dict:
        return {
            "compile": self.compile,
            "bf16": self.bf16,
            "channels_last": self.channels_last,
            "cuda_graphs": self.cuda_graphs,
        }

    def runtime(self, study_runtime: dict, device: torch.device) -> dict:
        """The trainer's ``runtime`` section for this mode on ``device``: the study's, with this mode's
        switches."""
        return {**study_runtime, **self.switches(), "device": device.type}

    def unavailable_on(self, device: torch.device, study_runtime: dict) -> str | None:
        """Why this mode is not run on ``device`` under the study's runtime section, or None when it is."""
        from cifar_resnet.runtime import Runtime  # here: the module's names come without torch

        inactive = Runtime.resolve(self.runtime(study_runtime, device), device).not_applied
        if inactive:
            return f"n/a on {device.type} (the trainer does not apply {', '.join(inactive)} there)"
        return None


DEFAULT_MODES = (
    "eager",
    "eager+bf16",
    "eager+bf16+channels_last",
    "compile",
    "compile+bf16",
    "compile+bf16+channels_last",
    "compile+bf16+channels_last+cuda_graphs",
)
ALL_MODES = tuple(
    Mode(compile, bf16, channels_last, cuda_graphs).name
    for compile, bf16, channels_last, cuda_graphs in itertools.product((False, True), repeat=4)
    if compile or not cuda_graphs
)


def packing_mode(name: str | None, device: torch.device) -> Mode:
    """The mode named (bf16 on CUDA and fp32 elsewhere when None), checked to be one packing supports."""
    mode = Mode.parse(name) if name else Mode(bf16=device.type == "cuda")
    if mode.channels_last or mode.cuda_graphs:
        raise ValueError(f"packed training runs eager or compiled, with or without bf16, not {mode.name}")
    return mode
