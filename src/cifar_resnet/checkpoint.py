"""Checkpoints: the resume state, everything a restarted job needs to continue bit-identically after its
last saved epoch (one dict in one file, written atomically and refused when it belongs to another
configuration), and the pretrained backbone a fine-tuning run starts from."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cifar_resnet.errors import StudyError
from cifar_resnet.tensors import load_checkpoint, load_tensors, save_tensors

log = logging.getLogger(__name__)


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_resume_state(path: Path, progress: dict, model, optimizer, schedule, monitors: dict) -> None:
    """``progress`` (the training loop's own state, as plain data) with the state of the model,
    optimizer, schedule and monitors, which ``restore`` puts back."""
    save_tensors(
        path,
        {
            "progress": progress,
            "model": cpu_state(model),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "monitors": {name: (m.best, m.epochs_without_improvement) for name, m in monitors.items()},
        },
    )


def read_resume_state(path: Path, expected_hash: str) -> dict | None:
    """The resume state at ``path`` when it belongs to the configuration ``expected_hash``; an
    unreadable or foreign file (another configuration's, or one of an earlier layout, which kept the
    progress beside the model's state) is removed and None returned, so the run starts from scratch."""
    if not path.exists():
        return None
    try:
        state = load_tensors(path)
    except Exception as error:  # a truncated or foreign file: any unpickling error means "not ours"
        return discard(path, f"is unreadable ({error})")
    progress = state.get("progress") if isinstance(state, dict) else None
    if not isinstance(progress, dict):
        return discard(path, "is not a resume state of this version")
    if progress.get("config_hash") != expected_hash:
        return discard(path, "belongs to another configuration")
    return state


def discard(path: Path, why: str) -> None:
    log.warning("resume file %s %s: starting from scratch", path, why)
    path.unlink()


def restore(state: dict, model, optimizer, schedule, monitors: dict) -> None:
    """Put the saved state of ``save_resume_state`` back into the objects it came from; the optimizer's
    first, refused (StudyError) before anything has changed when it is not a torch.optim state of this
    optimizer (an earlier version of this code kept its own)."""
    try:  # torch.optim checks the groups before it changes anything
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, ValueError) as error:
        raise StudyError(
            f"its optimizer state is not a torch.optim state of this run's {type(optimizer).__name__} "
            f"({type(error).__name__}: {error})"
        ) from None
    model.load_state_dict(state["model"])
    schedule.load_state_dict(state["schedule"])
    for name, monitor in monitors.items():
        monitor.best, monitor.epochs_without_improvement = state["monitors"][name]


def load_pretrained_backbone(model, checkpoint_path: Path, freeze: bool) -> None:
    state = load_checkpoint(checkpoint_path)
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    try:
        model.backbone.load_state_dict(backbone)
    except RuntimeError as error:
        raise StudyError(
            f"pretrained checkpoint {checkpoint_path} does not fit this model's backbone: {error}"
        ) from None
    if freeze:
        model.backbone.requires_grad_(False)
    log.info("backbone initialised from %s%s", checkpoint_path, " and frozen" if freeze else "")
