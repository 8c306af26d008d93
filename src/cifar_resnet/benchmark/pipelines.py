"""The single-model pipelines. ``ours`` is a real trainer, built by ``train.build_trainer`` as a
training job builds it, timed through the trainer's own step loop ``train.train_steps``: the data lives
on the device as uint8, each chunk of steps is ordered and augmented in one batched call, and nothing
waits for the host until the chunk's closing finiteness check, as at the end of a training epoch.
``classical`` is the way most CIFAR reproductions train: a torchvision-style dataset of uint8 HWC
arrays returning PIL images, RandomCrop, RandomHorizontalFlip, ToTensor and Normalize in DataLoader
workers, fp32, eager, and ``loss.item()`` after every step for the running loss (a host sync per step,
as in those repositories' logging). Both train the study's paper recipe (``Settings``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cifar_resnet import train
from cifar_resnet.benchmark.data import MEAN, NUM_CLASSES, STD
from cifar_resnet.benchmark.modes import Mode
from cifar_resnet.benchmark.settings import Settings
from cifar_resnet.benchmark.timing import (
    Measurement,
    Protocol,
    RunChunk,
    check_chunk_size,
    measure,
    start_memory_count,
)
from cifar_resnet.models import ModelSpec, build_model
from cifar_resnet.runtime import Runtime, compile_counts

# --- ours: the trainer -------------------------------------------------------------------------


def our_trainer(
    depth: int, mode: Mode, device: torch.device, protocol: Protocol, data: dict, settings: Settings
) -> train.Trainer:
    """The trainer a training job of the paper recipe builds in ``mode`` on ``data`` (a prepared
    dataset's dict, ``data.synthetic_data``), seeded with ``protocol.seed``, without its step counter."""
    runtime = mode.runtime(settings.runtime, device)
    run_config = settings.run_config(depth, runtime, protocol.seed, protocol.batch_size)
    trainer, _ = train.build_trainer(run_config, data, None, Runtime.start(runtime))
    trainer.show_progress = False
    return trainer


def trainer_chunks(trainers: Sequence[train.Trainer], protocol: Protocol) -> RunChunk:
    """``run_chunk(index, steps)``: for each trainer in turn, the first ``steps`` steps of its epoch
    ``index + 1``, run by the trainer's own ``train.train_steps``."""
    for trainer in trainers:
        check_chunk_size(protocol, len(trainer.train.labels))

    def run_chunk(index: int, steps: int) -> None:
        for trainer in trainers:
            train.train_steps(trainer, index + 1, steps)

    return run_chunk


def our_step_throughput(
    depth: int, mode: Mode, device: torch.device, protocol: Protocol, data: dict, settings: Settings
) -> Measurement:
    """Images/s of a training job's step loop in ``mode``."""
    start_memory_count(device)
    trainer = our_trainer(depth, mode, device, protocol, data, settings)
    skipped_before = compile_counts()["cuda_graph_skips"]
    measured = measure(trainer_chunks([trainer], protocol), protocol.batch_size, protocol, device)
    if mode.cuda_graphs and compile_counts()["cuda_graph_skips"] > skipped_before:
        return replace(measured, note="Inductor skipped CUDA graphs (see its warning): timed without them")
    return measured


# --- the classical pipeline --------------------------------------------------------------------


class ClassicalCifar(Dataset):
    """torchvision.datasets.CIFAR10's item path: a uint8 HWC array becomes a PIL image, then the
    transform; the label is a Python int."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def classical_transform(augmentation: dict) -> transforms.Compose:
    """The recipe's ``augmentation`` (pad-and-crop, flip) as torchvision transforms, then Normalize."""
    steps = [transforms.RandomCrop(32, padding=augmentation["crop_padding"])]
    if augmentation["flip"]:
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def classical_loader(
    images, labels, batch_size: int, num_workers: int, device, augmentation: dict, seed: int = 0
) -> DataLoader:
    """A shuffling DataLoader over ``images`` (uint8 [N,3,H,W], turned into the HWC arrays torchvision
    keeps) with the classical transforms in ``num_workers`` worker processes."""
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    return DataLoader(
        ClassicalCifar(hwc, labels.numpy(), classical_transform(augmentation)),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def endless(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def classical_throughput(
    depth: int, device: torch.device, protocol: Protocol, num_workers: int, data: dict, settings: Settings
) -> Measurement:
    """Images/s of the classical DataLoader pipeline, fp32 and eager, with the recipe's model, optimizer
    and augmentation."""
    runtime_config = Mode().runtime(settings.runtime, device)
    run_config = settings.run_config(depth, runtime_config, protocol.seed, protocol.batch_size)
    runtime = Runtime.start(runtime_config)
    start_memory_count(device)
    loader = classical_loader(
        data["train_images"],
        data["train_labels"],
        protocol.batch_size,
        num_workers,
        device,
        settings.recipe["augmentation"],
        protocol.seed,
    )
    batches = endless(loader)
    torch.manual_seed(protocol.seed)
    model = runtime.to_device(build_model(ModelSpec.for_run(run_config, NUM_CLASSES))).train()
    optimizer = train.make_optimizer(model.parameters(), settings.recipe["optimizer"], runtime)

    def run_chunk(_index: int, steps: int) -> None:
        running_loss = 0.0
        for _ in range(steps):
            batch_images, batch_labels = next(batches)
            batch_images = batch_images.to(device, non_blocking=True)
            batch_labels = batch_labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(batch_images), batch_labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()

    try:
        return measure(run_chunk, protocol.batch_size, protocol, device)
    finally:
        batches.close()  # stops the worker processes now rather than at garbage collection
