"""Synthetic CIFAR-shaped data for the benchmark: random uint8 images and labels of 10 classes, in the
form of ``datasets.load_prepared``'s dict, so that the trainer takes it as it takes a prepared dataset.
For random images any fixed channel statistics measure the same work."""

from __future__ import annotations

import torch

EPOCH_IMAGES = 45_000  # the paper's training split
VAL_IMAGES = 256  # the trainer moves a validation split onto the device; the benchmark never validates
NUM_CLASSES = 10
# CIFAR-10's training-set channel statistics
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def synthetic_cifar(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random CIFAR-shaped data on the CPU: uint8 images [count,3,32,32] and int64 labels in [0, 10)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, NUM_CLASSES, (count,), generator=generator)


def synthetic_data(train_size: int = EPOCH_IMAGES, seed: int = 0) -> dict:
    """A prepared dataset's train and val splits on the CPU, ``train_size`` training images."""
    train_images, train_labels = synthetic_cifar(train_size, seed)
    val_images, val_labels = synthetic_cifar(VAL_IMAGES, seed + 1)
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "val_images": val_images,
        "val_labels": val_labels,
        "mean": torch.tensor(MEAN),
        "std": torch.tensor(STD),
        "num_classes": NUM_CLASSES,
        "class_names": [f"class {index}" for index in range(NUM_CLASSES)],
    }


def on_device(data: dict, device: torch.device) -> dict:
    """``data`` with its tensors on ``device``: trainers built from it share one copy there."""
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in data.items()}
