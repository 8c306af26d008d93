"""The prepared dataset: split the training records into train and validation, compute the train-split
normalisation statistics, write the prepared file and load it back, checked.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch

from cifar_resnet.archive import read_archive
from cifar_resnet.download import file_md5
from cifar_resnet.errors import StudyError
from cifar_resnet.sources import IMAGE_SHAPE, DatasetSource
from cifar_resnet.tensors import load_tensors, save_tensors

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split's images and labels, on the device that trains or evaluates on them."""

    images: torch.Tensor  # uint8 [N,3,32,32]
    labels: torch.Tensor  # int64 [N]


# --- splitting and preparation ----------------------------------------------------------------------


def split_indices(
    labels: torch.Tensor, validation_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions of ``labels`` into sorted (train, validation) indices, stratified by class.

    Each class gives the floor or ceiling of its exact share so the validation set has exactly
    round(fraction * N) images (largest remainders get the extra ones): 5,000 of 50,000 at 0.1.
    """
    if not 0 <= validation_fraction < 1:
        raise StudyError(f"validation fraction {validation_fraction} must be at least 0 and below 1.")
    classes, counts = torch.unique(labels, return_counts=True)
    quotas = validation_quotas(counts.tolist(), validation_fraction)
    generator = torch.Generator().manual_seed(seed)
    validation = []
    for label, quota in zip(classes.tolist(), quotas, strict=True):
        members = torch.nonzero(labels == label).flatten()
        shuffled = members[torch.randperm(len(members), generator=generator)]
        validation.append(shuffled[:quota])
    validation_indices = torch.sort(torch.cat(validation)).values
    is_train = torch.ones(len(labels), dtype=torch.bool)
    is_train[validation_indices] = False
    return torch.nonzero(is_train).flatten(), validation_indices


def validation_quotas(counts: Sequence[int], fraction: float) -> list[int]:
    shares = [fraction * count for count in counts]
    quotas = [math.floor(share) for share in shares]
    missing = round(fraction * sum(counts)) - sum(quotas)
    by_remainder = sorted(range(len(counts)), key=lambda i: quotas[i] - shares[i])
    for i in by_remainder[:missing]:
        quotas[i] += 1
    return quotas


def channel_mean_std(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation on the [0, 1] scale, accumulated in float64 by chunks so
    50,000 images never need a float copy at once."""
    total = torch.zeros(3, dtype=torch.float64)
    total_squares = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        pixels = images[start : start + chunk].to(torch.float64) / 255
        total += pixels.sum(dim=(0, 2, 3))
        total_squares += pixels.square().sum(dim=(0, 2, 3))
    count = len(images) * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
    mean = total / count
    std = (total_squares / count - mean.square()).clamp_min(0).sqrt()
    return mean.float(), std.float()


def prepare_dataset(
    archive: Path, output: Path, source: DatasetSource, validation_fraction: float, split_seed: int
) -> None:
    """Write the train/validation/test splits and the train-split normalisation statistics to ``output``."""
    raw = read_archive(archive, source)
    train_indices, val_indices = split_indices(raw.train_labels, validation_fraction, split_seed)
    train_images = raw.train_images[train_indices]
    mean, std = channel_mean_std(train_images)
    save_tensors(
        output,
        {
            "train_images": train_images,
            "train_labels": raw.train_labels[train_indices],
            "val_images": raw.train_images[val_indices],
            "val_labels": raw.train_labels[val_indices],
            "test_images": raw.test_images,
            "test_labels": raw.test_labels,
            "mean": mean,
            "std": std,
            "class_names": raw.class_names,
            "num_classes": source.num_classes,
            "dataset": source.name,
            "validation_fraction": float(validation_fraction),
            "split_seed": int(split_seed),
            "archive_md5": file_md5(archive),
        },
    )


# --- loading prepared data --------------------------------------------------------------------------


def load_prepared(path: Path, splits: Sequence[str] = ("train", "val")) -> dict:
    """Load the requested splits (the test set only when asked for) with the normalisation statistics."""
    unknown = [split for split in splits if split not in SPLITS]
    if unknown:
        raise StudyError(
            f"unknown split {unknown[0]!r} requested from {path}; choose from {', '.join(SPLITS)}."
        )
    data = read_prepared_file(Path(path))
    num_classes = data.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise_bad_key(path, "num_classes", "a positive int", describe(num_classes))
    class_names = data.get("class_names")
    if not isinstance(class_names, list) or len(class_names) != num_classes:
        raise_bad_key(path, "class_names", f"a list of {num_classes} names", describe(class_names))
    for key in ("mean", "std"):
        check_tensor(path, key, data.get(key), torch.float32, (3,))
    loaded = {key: data[key] for key in ("mean", "std", "class_names", "num_classes")}
    for split in splits:
        images, labels = data.get(f"{split}_images"), data.get(f"{split}_labels")
        check_tensor(path, f"{split}_images", images, torch.uint8, (None, *IMAGE_SHAPE))
        check_tensor(path, f"{split}_labels", labels, torch.int64, (len(images),))
        if len(labels) and not (labels.min() >= 0 and labels.max() < num_classes):
            found = f"labels from {labels.min().item()} to {labels.max().item()}"
            raise_bad_key(path, f"{split}_labels", f"labels from 0 to {num_classes - 1}", found)
        loaded[f"{split}_images"], loaded[f"{split}_labels"] = images, labels
    return loaded


def read_prepared_file(path: Path) -> dict:
    if not path.is_file():
        raise StudyError(f"prepared dataset {path} does not exist; run the data preparation step first.")
    try:
        data = load_tensors(path)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        raise StudyError(
            f"prepared dataset {path} cannot be read ({error}); delete it and rerun the data preparation."
        ) from error
    if not isinstance(data, dict):
        raise StudyError(
            f"prepared dataset {path} holds a {type(data).__name__}, not a dict; rerun the preparation."
        )
    return data


def check_tensor(path: Path, key: str, value, dtype: torch.dtype, shape: tuple[int | None, ...]) -> None:
    """Check ``value`` is a tensor of ``dtype`` and ``shape`` (``None`` matches any size)."""
    shape_ok = (
        isinstance(value, torch.Tensor)
        and value.dim() == len(shape)
        and all(want is None or want == have for want, have in zip(shape, value.shape, strict=True))
    )
    if not shape_ok or value.dtype != dtype:
        expected_shape = ", ".join("N" if size is None else str(size) for size in shape)
        raise_bad_key(path, key, f"a {dtype} tensor of shape [{expected_shape}]", describe(value))


def describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}"


def raise_bad_key(path: Path, key: str, expected: str, found: str) -> NoReturn:
    raise StudyError(
        f"prepared dataset {path} has {found} under {key!r}, expected {expected}; "
        "delete it and rerun the data preparation."
    )
