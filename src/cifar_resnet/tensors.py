"""Tensor files: ``torch.save`` written atomically, and ``torch.load`` of tensors and plain containers only
(``weights_only``), with a damaged workflow output reported in one sentence. Apart from ``files`` so that
the jobs that never read a tensor (the report's) never import torch."""

from __future__ import annotations

import os
import pickle
import zipfile

import torch

from cifar_resnet.files import atomic_output, check_tensor_file, unreadable


def save_tensors(path: str | os.PathLike, data) -> None:
    """``torch.save`` of tensors and plain containers only, so ``load_tensors`` can refuse anything else.
    Saved through a file object: torch names the archive inside after a path it is given, which would
    record the temporary name and make the same tensors give other bytes each time."""
    with atomic_output(path) as temporary, open(temporary, "wb") as handle:
        torch.save(data, handle)


def load_tensors(path: str | os.PathLike, map_location="cpu"):
    return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(path: str | os.PathLike):
    """``load_tensors`` of a workflow output: a file torch cannot read is reported in one sentence."""
    check_tensor_file(path)
    try:
        return load_tensors(path)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise unreadable(path, f"cannot be read as a checkpoint ({reason.rstrip('.')})") from None
