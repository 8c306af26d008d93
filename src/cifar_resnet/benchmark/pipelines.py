"""The single-model pipelines. ``ours`` is a real trainer, built by ``train.build_trainer`` as a
training job builds it, timed through the trainer's own step loop ``train.train_steps``: the data lives
on the device as uint8, each epoch's steps are ordered and augmented in one batched call, and nothing
waits for the host until their closing finiteness check, as at the end of a training epoch.
``classical`` is the way most CIFAR reproductions train: a torchvision-style dataset of uint8 HWC
arrays returning PIL images, RandomCrop, RandomHorizontalFlip, ToTensor and Normalize in DataLoader
workers, fp32, eager, and ``loss.item()`` after every step for the running loss (a host sync per step,
as in those repositories' logging). Both train the study's paper recipe (``Settings``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

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
from cifar_resnet.benchmark.timing import Pipeline, Protocol
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
    trainer = train.build_trainer(run_config, data, None, Runtime.start(runtime))
    trainer.show_progress = False
    return trainer


def epoch_pieces(steps: int, steps_per_epoch: int) -> list[int]:
    """``steps`` steps as the steps of consecutive epochs: whole epochs, then the rest. A repeat of a
    fast GPU outlasts an epoch (ResNet-20's 351 steps take half a second at 100,000 images/s)."""
    whole, rest = divmod(steps, steps_per_epoch)
    return [steps_per_epoch] * whole + ([rest] if rest else [])


def trainer_steps(trainers: Sequence[train.Trainer]) -> Callable[[int], None]:
    """``run(steps)``: for each trainer in turn, ``steps`` steps of its next epochs (each epoch its own
    order and augmentation), run by the trainer's own ``train.train_steps``."""
    epochs = [0] * len(trainers)  # the last epoch each trainer began

    def run(steps: int) -> None:
        for index, trainer in enumerate(trainers):
            for piece in epoch_pieces(steps, trainer.steps_per_epoch):
                epochs[index] += 1
                train.train_steps(trainer, epochs[index], piece)

    return run


def our_pipeline(
    depth: int,
    mode: Mode,
    device: torch.device,
    protocol: Protocol,
    data: dict,
    settings: Settings,
    threads: int,
) -> Pipeline:
    """A training job's step loop in ``mode``, on ``threads`` torch threads."""
    torch.set_num_threads(threads)
    trainer = our_trainer(depth, mode, device, protocol, data, settings)
    skipped_before = compile_counts()["cuda_graph_skips"]

    def check() -> str:
        if mode.cuda_graphs and compile_counts()["cuda_graph_skips"] > skipped_before:
            return "Inductor skipped CUDA graphs (see its warning): timed without them"
        return ""

    return Pipeline(trainer_steps([trainer]), protocol.batch_size, device, threads, check=check)


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
    """Leaves a core for the training loop: the classical pipeline's cores are its threads plus these."""
    return min(8, (os.cpu_count() or 1) - 1)


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


def classical_pipeline(
    depth: int,
    device: torch.device,
    protocol: Protocol,
    num_workers: int,
    data: dict,
    settings: Settings,
    threads: int,
) -> Pipeline:
    """The classical DataLoader pipeline, fp32 and eager, with the recipe's model, optimizer and
    augmentation, on ``threads`` torch threads and ``num_workers`` worker processes (one thread each, as
    the DataLoader sets them)."""
    runtime_config = Mode().runtime(settings.runtime, device)
    run_config = settings.run_config(depth, runtime_config, protocol.seed, protocol.batch_size)
    runtime = Runtime.start(runtime_config)
    torch.set_num_threads(threads)
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

    def run(steps: int) -> None:
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

    prefetched = num_workers * loader.prefetch_factor if num_workers else 0
    # close stops the worker processes now rather than at garbage collection
    return Pipeline(run, protocol.batch_size, device, threads, prefetched, close=batches.close)
