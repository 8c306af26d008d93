"""The trainer: a run's model, optimizer, schedule and data, built once, and its epochs. The split lives
on the training device as one uint8 tensor, each epoch is augmented there in one batched call, and the
step loop never waits for the host (metrics are read once per epoch). Every epoch draws its randomness
from a generator seeded by (seed, epoch), so a resumed run continues bit-identically."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cifar_resnet import checkpoint
from cifar_resnet.augment import augment, normalize
from cifar_resnet.datasets import Split
from cifar_resnet.errors import StudyError
from cifar_resnet.evaluate import evaluate_split
from cifar_resnet.models import CifarResNet, ModelSpec, build_model
from cifar_resnet.runtime import Runtime, describe_execution, synchronize
from cifar_resnet.schedule import LearningRate

log = logging.getLogger(__name__)


@dataclass
class Trainer:
    """What every epoch of one run shares, and what its model's output means."""

    model: CifarResNet
    spec: ModelSpec  # the model's architecture
    class_names: list[str]  # the model's outputs, in order
    forward: Callable  # the model, compiled where enabled
    optimizer: torch.optim.Optimizer
    schedule: LearningRate
    train: Split
    val: Split
    mean: torch.Tensor
    std: torch.Tensor
    recipe: dict
    runtime: Runtime
    seed: int
    frozen: bool
    steps_per_epoch: int
    total_iterations: int
    show_progress: bool  # a step counter on the terminal, when there is one
    first_step_seconds: float | None = None  # this process's first step: compilation, autotuning
    # Read after every step: true once the job has been asked to stop (a cluster's SIGTERM), so that the
    # step loop ends at the next step boundary with what it needs to continue there.
    stop_requested: Callable[[], bool] = lambda: False

    @property
    def batch_size(self) -> int:
        return self.recipe["training"]["batch_size"]

    @property
    def total_epochs(self) -> int:
        return math.ceil(self.total_iterations / self.steps_per_epoch)


OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "nadam": torch.optim.NAdam}


def make_optimizer(parameters, settings: dict, runtime: Runtime) -> torch.optim.Optimizer:
    """The recipe's optimizer (``settings``), with fused kernels where the runtime allows them and the
    optimizer has them (NAdam has none), else foreach. Part of this module's interface for callers that
    train parameters of their own by the recipe (the benchmark's classical pipeline and packed models),
    so that they get the trainer's optimizer."""
    hyper = {"lr": settings["lr"], "weight_decay": settings["weight_decay"]}
    if settings["name"] == "sgd":
        hyper |= {"momentum": settings["momentum"], "nesterov": settings["nesterov"]}
    fused = runtime.fused_optimizer and settings["name"] != "nadam"
    return OPTIMIZERS[settings["name"]](parameters, **hyper, **{"fused" if fused else "foreach": True})


def build_trainer(run_config: dict, data: dict, pretrained: Path | None, runtime: Runtime) -> Trainer:
    """The trainer of ``run_config`` on ``data`` (``datasets.load_prepared``'s train and val splits,
    on the CPU) with ``runtime``, its backbone loaded from ``pretrained`` where the recipe asks for it."""
    recipe, device = run_config["recipe"], runtime.device
    training = recipe["training"]
    train = Split(data["train_images"].to(device), data["train_labels"].to(device))
    steps_per_epoch = len(train.labels) // training["batch_size"]
    if steps_per_epoch == 0:
        raise StudyError(
            f"the training split has {len(train.labels)} images, "
            f"fewer than one batch of {training['batch_size']}."
        )
    torch.manual_seed(run_config["seed"])
    spec = ModelSpec.for_run(run_config, data["num_classes"])
    model = runtime.to_device(build_model(spec))
    frozen = bool(recipe.get("pretrained") and recipe["pretrained"]["freeze_backbone"])
    if pretrained is not None:
        checkpoint.load_pretrained_backbone(model, pretrained, frozen)
    trainer = Trainer(
        model=model,
        spec=spec,
        class_names=data["class_names"],
        forward=runtime.forward_of(model),
        optimizer=make_optimizer(
            [p for p in model.parameters() if p.requires_grad], recipe["optimizer"], runtime
        ),
        schedule=LearningRate(recipe, run_config["depth"], steps_per_epoch),
        train=train,
        val=Split(data["val_images"].to(device), data["val_labels"].to(device)),
        mean=data["mean"].to(device),
        std=data["std"].to(device),
        recipe=recipe,
        runtime=runtime,
        seed=run_config["seed"],
        frozen=frozen,
        steps_per_epoch=steps_per_epoch,
        total_iterations=training["duration"] * (steps_per_epoch if training["unit"] == "epochs" else 1),
        show_progress=sys.stderr.isatty(),
    )
    log.info("%s", describe_execution(runtime.execution(trainer.optimizer)))
    return trainer


def train_step(forward, optimizer, images, labels, mean, std, runtime: Runtime):
    """One optimizer step on a uint8 batch; returns the detached loss and the logits, without waiting
    for the device. With CUDA graphs the logits live until the next step's forward."""
    images = normalize(images, mean, std).contiguous(memory_format=runtime.memory_format)
    runtime.mark_step()
    with runtime.autocast():
        logits = forward(images)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach(), logits


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's randomness (order, augmentation, dropout) depends only on (seed, epoch): a resumed
    run draws exactly what an uninterrupted one would have. Part of this module's interface for callers
    that draw an epoch's data themselves (the benchmark's packed models), so that they draw as
    ``train_steps`` does."""
    return seed * 1_000_003 + epoch


def set_training_mode(model: CifarResNet, frozen_backbone: bool) -> None:
    model.train()
    if frozen_backbone:
        model.backbone.eval()  # frozen BN keeps using and keeping its pretrained running statistics


@dataclass
class StepsDone:
    """An epoch's step loop: its per-step losses and correct predictions, still on the device, and how
    many of its steps ran (fewer than planned where it was asked to stop)."""

    losses: torch.Tensor
    correct: torch.Tensor
    lr: float
    steps: int


@dataclass
class PartialEpoch:
    """An epoch stopped at a step boundary: what its remaining steps need to continue exactly as an
    uninterrupted epoch would (its order and augmentation are drawn again from (seed, epoch); dropout
    continues from the global generators' state). Plain tensors and numbers, saved with the resume state."""

    epoch: int
    steps: int  # the steps done
    losses: torch.Tensor  # theirs, on the CPU
    correct: int
    seconds: float  # the step loop's time so far
    lr: float
    rng_state: torch.Tensor
    cuda_rng_state: torch.Tensor | None


def train_steps(trainer: Trainer, epoch: int, steps: int, partial: PartialEpoch | None = None) -> StepsDone:
    """The first ``steps`` steps of ``epoch`` over a fresh permutation of the training split, augmented
    in one batched call, from the step ``partial`` stopped at where it is given. Nothing waits for the
    device except the closing finiteness check: losses and hits accumulate there. The loop ends early
    at a step boundary once ``trainer.stop_requested()``."""
    batch_size, device = trainer.batch_size, trainer.runtime.device
    first_iteration = (epoch - 1) * trainer.steps_per_epoch
    generator = torch.Generator(device=device).manual_seed(epoch_seed(trainer.seed, epoch))
    torch.manual_seed(epoch_seed(trainer.seed, epoch))  # dropout
    order = torch.randperm(len(trainer.train.labels), generator=generator, device=device)[
        : steps * batch_size
    ]
    augmentation = trainer.recipe["augmentation"]
    epoch_images = augment(
        trainer.train.images[order], augmentation["crop_padding"], augmentation["flip"], generator
    )
    epoch_labels = trainer.train.labels[order]
    losses = torch.empty(steps, device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    start, lr = 0, trainer.schedule.at(first_iteration)
    if partial is not None:
        start, lr = partial.steps, partial.lr
        losses[:start] = partial.losses.to(device)
        correct += partial.correct
        torch.set_rng_state(partial.rng_state)
        if partial.cuda_rng_state is not None:
            torch.cuda.set_rng_state(partial.cuda_rng_state, device)
    set_training_mode(trainer.model, trainer.frozen)
    for step in range(start, steps):
        if trainer.stop_requested():
            check_finite(losses[:step], epoch, first_iteration)
            return StepsDone(losses[:step], correct, lr, step)
        lr = trainer.schedule.at(first_iteration + step)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr
        batch = slice(step * batch_size, (step + 1) * batch_size)
        labels = epoch_labels[batch]
        timing_first_step = trainer.first_step_seconds is None
        if timing_first_step:
            step_started = time.perf_counter()
        losses[step], logits = train_step(
            trainer.forward,
            trainer.optimizer,
            epoch_images[batch],
            labels,
            trainer.mean,
            trainer.std,
            trainer.runtime,
        )
        correct += (logits.argmax(1) == labels).sum()
        if timing_first_step:  # one wait for the device per process, to time what the first step compiles
            synchronize(device)
            trainer.first_step_seconds = time.perf_counter() - step_started
        if trainer.show_progress:
            print(f"\repoch {epoch}/{trainer.total_epochs} step {step + 1}/{steps}", end="", file=sys.stderr)
    check_finite(losses, epoch, first_iteration)
    return StepsDone(losses, correct, lr, steps)


def train_epoch(trainer: Trainer, epoch: int, partial: PartialEpoch | None = None) -> dict | PartialEpoch:
    """One epoch's steps (continuing ``partial``), then validation; returns the history row, or the
    PartialEpoch where the job was asked to stop before its last step."""
    started = time.perf_counter()
    first_iteration = (epoch - 1) * trainer.steps_per_epoch
    steps = min(trainer.steps_per_epoch, trainer.total_iterations - first_iteration)
    done = train_steps(trainer, epoch, steps, partial)
    seconds = time.perf_counter() - started + (partial.seconds if partial else 0.0)
    if done.steps < steps:
        cuda = trainer.runtime.device.type == "cuda"
        return PartialEpoch(
            epoch,
            done.steps,
            done.losses.cpu(),
            int(done.correct),
            seconds,
            done.lr,
            torch.get_rng_state(),
            torch.cuda.get_rng_state(trainer.runtime.device) if cuda else None,
        )
    validation = evaluate_split(trainer.forward, trainer.val, trainer.mean, trainer.std, trainer.runtime)
    val_seconds = time.perf_counter() - started - seconds
    if trainer.show_progress:
        print("\r", end="", file=sys.stderr)
    return {
        "epoch": epoch,
        "iteration": first_iteration + steps,
        "lr": done.lr,
        "train_loss": done.losses.mean().item(),
        "train_accuracy": done.correct.item() / (steps * trainer.batch_size),
        "val_loss": validation.loss,
        "val_accuracy": validation.accuracy,
        "seconds": seconds,
        "images_per_s": steps * trainer.batch_size / seconds,
        "val_seconds": val_seconds,
        "epochs": trainer.total_epochs,  # planned: a running job's history says how far along it is
    }


def check_finite(step_losses: torch.Tensor, epoch: int, first_iteration: int) -> None:
    """Raises StudyError naming the first non-finite loss among ``step_losses``, epoch ``epoch``'s from
    iteration ``first_iteration`` + 1 on. Part of this module's interface for callers that run a step
    loop of their own (the benchmark's packed models), so that they stop on divergence as a job does."""
    finite = torch.isfinite(step_losses)
    if not bool(finite.all()):
        step = int((~finite).nonzero()[0])
        raise StudyError(
            f"training diverged: the loss became {step_losses[step].item()} at epoch {epoch}, iteration "
            f"{first_iteration + step + 1}; lower the learning rate or add a warm-up."
        )
