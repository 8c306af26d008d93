"""Training one run: the split lives on the training device as one uint8 tensor, each epoch is
augmented there in one batched call, and the step loop never waits for the host (metrics are read once
per epoch). State is checkpointed after every epoch, and a restarted job resumes bit-identically
because every epoch draws its randomness from a generator seeded by (seed, epoch)."""

from __future__ import annotations

import csv
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cifar_resnet import datasets
from cifar_resnet.augment import augment, normalize
from cifar_resnet.config import config_hash
from cifar_resnet.errors import StudyError
from cifar_resnet.files import atomic_output, load_tensors, save_tensors, write_json
from cifar_resnet.models import CifarResNet, ModelSpec, build_model
from cifar_resnet.schedule import LearningRate

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL_SECONDS = 60.0

HISTORY_COLUMNS = [
    "epoch",
    "iteration",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "seconds",
    "images_per_s",
    "val_seconds",
]


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N,3,32,32] on the device
    labels: torch.Tensor  # int64 [N] on the device


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    predictions: torch.Tensor


def select_device(requested: str) -> torch.device:
    if requested == "cpu":
        log.info("device: the CPU, as the config asks")
        return torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda")
        log.info(
            "device: %s (CUDA_VISIBLE_DEVICES=%s)",
            torch.cuda.get_device_name(device),
            os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
        )
        return device
    if requested == "cuda":
        raise StudyError(
            "runtime.device is 'cuda' but CUDA is not available to this job; "
            "run it on a GPU node or set runtime.device to auto."
        )
    log.warning("device: CUDA is not available, training on the CPU (%d threads)", torch.get_num_threads())
    return torch.device("cpu")


def configure_backends(device: torch.device, runtime: dict) -> None:
    if device.type != "cuda":
        return
    if runtime["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, runtime: dict):
    return torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and runtime["bf16"]
    )


def to_device(model: CifarResNet, device: torch.device, runtime: dict) -> CifarResNet:
    return model.to(device=device, memory_format=memory_format_of(device, runtime))


def make_optimizer(parameters, settings: dict, device: torch.device) -> torch.optim.Optimizer:
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if settings["name"] == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=settings["lr"],
            momentum=settings["momentum"],
            nesterov=settings["nesterov"],
            weight_decay=settings["weight_decay"],
            **fused,
        )
    if settings["name"] == "nadam":
        return torch.optim.NAdam(
            parameters, lr=settings["lr"], weight_decay=settings["weight_decay"], foreach=True
        )
    return torch.optim.Adam(parameters, lr=settings["lr"], weight_decay=settings["weight_decay"], **fused)


@torch.no_grad()
def evaluate(model, split: Split, mean, std, batch_size: int, device, runtime) -> Evaluation:
    """Loss, accuracy and predictions over a whole split, in large batches, one host sync at the end."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    predictions = torch.empty_like(split.labels)
    for start in range(0, len(split.labels), batch_size):
        images = normalize(split.images[start : start + batch_size], mean, std)
        labels = split.labels[start : start + batch_size]
        begin_step(device, runtime)
        with autocast(device, runtime):
            logits = model(images.contiguous(memory_format=memory_format_of(device, runtime)))
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        predictions[start : start + batch_size] = logits.argmax(1)
    correct = (predictions == split.labels).sum()
    count = len(split.labels)
    return Evaluation(loss=loss_sum.item() / count, accuracy=correct.item() / count, predictions=predictions)


def compiles(device: torch.device, runtime: dict) -> bool:
    return device.type == "cuda" and runtime["compile"]


def begin_step(device: torch.device, runtime: dict) -> None:
    """Tell CUDA graph replay that a new step begins: the previous step's outputs, which live in the
    graphs' memory pool, may now be overwritten."""
    if compiles(device, runtime) and runtime["cuda_graphs"]:
        torch.compiler.cudagraph_mark_step_begin()


def memory_format_of(device, runtime) -> torch.memory_format:
    return (
        torch.channels_last if device.type == "cuda" and runtime["channels_last"] else torch.contiguous_format
    )


def train_step(forward, optimizer, images, labels, mean, std, device, runtime):
    """One optimizer step on a uint8 batch; returns the detached loss and the logits, without waiting
    for the device. With CUDA graphs the logits live until the next step's forward."""
    images = normalize(images, mean, std).contiguous(memory_format=memory_format_of(device, runtime))
    begin_step(device, runtime)
    with autocast(device, runtime):
        logits = forward(images)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's randomness (order, augmentation, dropout) depends only on (seed, epoch): a resumed
    run draws exactly what an uninterrupted one would have."""
    return seed * 1_000_003 + epoch


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch))


def set_training_mode(model: CifarResNet, frozen_backbone: bool) -> None:
    model.train()
    if frozen_backbone:
        model.backbone.eval()  # frozen BN keeps using and keeping its pretrained running statistics


def load_pretrained_backbone(model: CifarResNet, checkpoint: Path, freeze: bool) -> None:
    state = load_tensors(checkpoint)
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    try:
        model.backbone.load_state_dict(backbone)
    except RuntimeError as error:
        raise StudyError(
            f"pretrained checkpoint {checkpoint} does not fit this model's backbone: {error}"
        ) from None
    if freeze:
        model.backbone.requires_grad_(False)
    log.info("backbone initialised from %s%s", checkpoint, " and frozen" if freeze else "")


class Monitor:
    """Tracks one validation metric: the best value so far and how many epochs since it improved."""

    def __init__(self, metric: str):
        self.metric = metric
        self.best = math.inf
        self.epochs_without_improvement = 0

    def update(self, row: dict) -> bool:
        value = row[self.metric] if self.metric == "val_loss" else -row[self.metric]
        if value < self.best:
            self.best, self.epochs_without_improvement = value, 0
            return True
        self.epochs_without_improvement += 1
        return False


@dataclass
class Outputs:
    model: Path
    history: Path
    summary: Path
    resume: Path


@dataclass
class Session:
    """What every epoch of one run shares."""

    model: CifarResNet
    forward: Callable  # the model, compiled where enabled
    optimizer: torch.optim.Optimizer
    schedule: LearningRate
    train: Split
    val: Split
    mean: torch.Tensor
    std: torch.Tensor
    recipe: dict
    runtime: dict
    device: torch.device
    seed: int
    frozen: bool
    steps_per_epoch: int
    total_iterations: int
    first_step_seconds: float | None = None  # this process's first step: compilation, autotuning

    @property
    def batch_size(self) -> int:
        return self.recipe["training"]["batch_size"]

    @property
    def total_epochs(self) -> int:
        return math.ceil(self.total_iterations / self.steps_per_epoch)


def start_session(run_config: dict, prepared: Path, pretrained: Path | None) -> tuple[Session, ModelSpec]:
    recipe, runtime = run_config["recipe"], run_config["runtime"]
    training = recipe["training"]
    device = select_device(runtime["device"])
    configure_backends(device, runtime)
    data = datasets.load_prepared(prepared, splits=("train", "val"))
    train = Split(data["train_images"].to(device), data["train_labels"].to(device))
    steps_per_epoch = len(train.labels) // training["batch_size"]
    if steps_per_epoch == 0:
        raise StudyError(
            f"the training split of {prepared} has {len(train.labels)} images, "
            f"fewer than one batch of {training['batch_size']}."
        )
    torch.manual_seed(run_config["seed"])
    spec = ModelSpec.for_run(run_config, data["num_classes"])
    model = to_device(build_model(spec), device, runtime)
    frozen = bool(recipe.get("pretrained") and recipe["pretrained"]["freeze_backbone"])
    if pretrained is not None:
        load_pretrained_backbone(model, pretrained, frozen)
    session = Session(
        model=model,
        forward=compiled(model, runtime) if compiles(device, runtime) else model,
        optimizer=make_optimizer(
            [p for p in model.parameters() if p.requires_grad], recipe["optimizer"], device
        ),
        schedule=LearningRate(recipe, run_config["depth"], steps_per_epoch),
        train=train,
        val=Split(data["val_images"].to(device), data["val_labels"].to(device)),
        mean=data["mean"].to(device),
        std=data["std"].to(device),
        recipe=recipe,
        runtime=runtime,
        device=device,
        seed=run_config["seed"],
        frozen=frozen,
        steps_per_epoch=steps_per_epoch,
        total_iterations=training["duration"] * (steps_per_epoch if training["unit"] == "epochs" else 1),
    )
    return session, spec


def train_epoch(session: Session, epoch: int) -> dict:
    """One pass over a fresh permutation of the training split, then validation; returns the history row.
    Nothing in the step loop waits for the device: losses and hits accumulate there and are read once."""
    started = time.perf_counter()
    batch_size, device = session.batch_size, session.device
    first_iteration = (epoch - 1) * session.steps_per_epoch
    steps = min(session.steps_per_epoch, session.total_iterations - first_iteration)
    generator = epoch_generator(session.seed, epoch, device)
    torch.manual_seed(epoch_seed(session.seed, epoch))  # dropout
    order = torch.randperm(len(session.train.labels), generator=generator, device=device)[
        : steps * batch_size
    ]
    augmentation = session.recipe["augmentation"]
    epoch_images = augment(
        session.train.images[order], augmentation["crop_padding"], augmentation["flip"], generator
    )
    epoch_labels = session.train.labels[order]
    step_losses = torch.empty(steps, device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    show_progress = sys.stderr.isatty()
    set_training_mode(session.model, session.frozen)
    for step in range(steps):
        lr = session.schedule.at(first_iteration + step)
        for group in session.optimizer.param_groups:
            group["lr"] = lr
        batch = slice(step * batch_size, (step + 1) * batch_size)
        labels = epoch_labels[batch]
        timing_first_step = session.first_step_seconds is None
        if timing_first_step:
            step_started = time.perf_counter()
        step_losses[step], logits = train_step(
            session.forward,
            session.optimizer,
            epoch_images[batch],
            labels,
            session.mean,
            session.std,
            device,
            session.runtime,
        )
        correct += (logits.argmax(1) == labels).sum()
        if timing_first_step:  # one wait for the device per process, to time what the first step compiles
            synchronize(device)
            session.first_step_seconds = time.perf_counter() - step_started
        if show_progress:
            print(f"\repoch {epoch}/{session.total_epochs} step {step + 1}/{steps}", end="", file=sys.stderr)
    check_finite(step_losses, epoch, first_iteration)
    seconds = time.perf_counter() - started
    validation = evaluate(
        session.forward,
        session.val,
        session.mean,
        session.std,
        session.runtime["eval_batch_size"],
        device,
        session.runtime,
    )
    val_seconds = time.perf_counter() - started - seconds
    if show_progress:
        print("\r", end="", file=sys.stderr)
    return {
        "epoch": epoch,
        "iteration": first_iteration + steps,
        "lr": lr,
        "train_loss": step_losses.mean().item(),
        "train_accuracy": correct.item() / (steps * batch_size),
        "val_loss": validation.loss,
        "val_accuracy": validation.accuracy,
        "seconds": seconds,
        "images_per_s": steps * batch_size / seconds,
        "val_seconds": val_seconds,
    }


def train_run(
    run_config: dict,
    prepared: Path,
    outputs: Outputs,
    pretrained: Path | None = None,
    checkpoint_interval: float = CHECKPOINT_INTERVAL_SECONDS,
) -> dict:
    """Train one run to ``outputs``, resuming from ``outputs.resume`` where an earlier process left it.
    The resume state is saved after an epoch once ``checkpoint_interval`` seconds have passed since the
    last save, so a kill loses at most that much training, and short epochs on a fast GPU do not wait
    for a checkpoint each."""
    started = time.perf_counter()
    times = ProcessTimes(startup=process_age())
    training = run_config["recipe"]["training"]
    session, spec = start_session(run_config, prepared, pretrained)
    times.setup = time.perf_counter() - started
    state = {
        "config_hash": config_hash(run_config),
        "epoch": 0,
        "history": [],
        "train_seconds": 0.0,
        "selected": None,
        "stopped_early": False,
    }
    monitors = {}
    if training["selection"] != "final":
        monitors["selection"] = Monitor(training["selection"].removeprefix("best_"))
    if training["early_stopping"]:
        monitors["early_stopping"] = Monitor(training["early_stopping"]["monitor"])
    resumed = read_resume_state(outputs.resume, state["config_hash"])
    if resumed:
        session.model.load_state_dict(resumed["model"])
        session.optimizer.load_state_dict(resumed["optimizer"])
        session.schedule.load_state_dict(resumed["schedule"])
        for name, monitor in monitors.items():
            monitor.best, monitor.epochs_without_improvement = resumed["monitors"][name]
        state.update({k: resumed[k] for k in state})
        log.info("resumed from %s after epoch %d", outputs.resume, state["epoch"])
    log.info(
        "training %s ResNet-%d (%s), seed %d: %d iterations = %d epochs of %d steps, batch %d, on %s",
        run_config["variant"],
        run_config["depth"],
        run_config["dataset"],
        session.seed,
        session.total_iterations,
        session.total_epochs,
        session.steps_per_epoch,
        session.batch_size,
        session.device,
    )

    last_checkpoint = time.perf_counter()
    while state["epoch"] < session.total_epochs and not state["stopped_early"]:
        row = train_epoch(session, state["epoch"] + 1)
        log.info(
            "epoch %d/%d iter %d lr %.4g train loss %.4f acc %.2f%% val loss %.4f acc %.2f%% "
            "%.1f s %.0f img/s",
            row["epoch"],
            session.total_epochs,
            row["iteration"],
            row["lr"],
            row["train_loss"],
            100 * row["train_accuracy"],
            row["val_loss"],
            100 * row["val_accuracy"],
            row["seconds"],
            row["images_per_s"],
        )
        session.schedule.end_of_epoch(row["val_accuracy"])
        if "selection" in monitors and monitors["selection"].update(row):
            state["selected"] = {"epoch": row["epoch"], "model": cpu_state(session.model)}
        if "early_stopping" in monitors:
            stopping = monitors["early_stopping"]
            stopping.update(row)
            if stopping.epochs_without_improvement >= training["early_stopping"]["patience"]:
                state["stopped_early"] = True
                log.info(
                    "early stopping after epoch %d: %s has not improved for %d epochs",
                    row["epoch"],
                    stopping.metric,
                    stopping.epochs_without_improvement,
                )
        state["history"].append(row)
        state["epoch"] = row["epoch"]
        state["train_seconds"] += row["seconds"]
        times.training += row["seconds"]
        times.validation += row["val_seconds"]
        finished = state["epoch"] == session.total_epochs or state["stopped_early"]
        if finished or time.perf_counter() - last_checkpoint < checkpoint_interval:
            continue
        checkpoint_started = time.perf_counter()
        save_tensors(
            outputs.resume,
            {
                **state,
                "model": cpu_state(session.model),
                "optimizer": session.optimizer.state_dict(),
                "schedule": session.schedule.state_dict(),
                "monitors": {name: (m.best, m.epochs_without_improvement) for name, m in monitors.items()},
            },
        )
        last_checkpoint = time.perf_counter()
        times.checkpoints += last_checkpoint - checkpoint_started

    final = {"epoch": state["epoch"], "model": cpu_state(session.model)}
    selected = state["selected"] or final
    selected_row = state["history"][selected["epoch"] - 1]
    save_tensors(outputs.model, selected["model"])
    write_history(outputs.history, state["history"])
    wall_seconds = time.perf_counter() - started
    summary = {
        "dataset": run_config["dataset"],
        "variant": run_config["variant"],
        "depth": run_config["depth"],
        "seed": session.seed,
        "config": run_config,
        "config_hash": state["config_hash"],
        "model": vars(spec),
        "train_seconds": state["train_seconds"],
        "wall_seconds": wall_seconds,
        "timings": times.summary(wall_seconds, session.first_step_seconds),
        "epochs": state["epoch"],
        "iterations": state["history"][-1]["iteration"],
        "selected_epoch": selected["epoch"],
        "selected_val_accuracy": selected_row["val_accuracy"],
        "selected_val_loss": selected_row["val_loss"],
        "stopped_early": state["stopped_early"],
        "images_per_s": statistics.median([row["images_per_s"] for row in state["history"]]),
        "device": describe_device(session.device),
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "git_commit": git_commit(),
    }
    write_json(outputs.summary, summary)
    outputs.resume.unlink(missing_ok=True)
    log.info(
        "done: selected epoch %d (val acc %.2f%%), %.1f s training, %.1f s wall",
        selected["epoch"],
        100 * selected_row["val_accuracy"],
        summary["train_seconds"],
        summary["wall_seconds"],
    )
    log.info("%s", describe_timings(summary["timings"]))
    return summary


@dataclass
class ProcessTimes:
    """Where this process's time went, in seconds. A resumed run's earlier processes are not included."""

    startup: float | None  # process start to train_run: interpreter, imports, Snakemake's script preamble
    setup: float = 0.0  # device, data onto the device, model, optimizer
    training: float = 0.0  # the epochs' step loops, this process's first step included
    validation: float = 0.0
    checkpoints: float = 0.0  # the resume state, at most every checkpoint interval

    def summary(self, wall_seconds: float, first_step: float | None) -> dict:
        """The parts, the job's time from process start and the fraction of it spent outside steady
        training steps: start-up, setup, the first step (compilation, autotuning), validation,
        checkpoints and the final outputs."""
        job = wall_seconds + (self.startup or 0.0)
        steady = self.training - (first_step or 0.0)
        return {
            "startup_seconds": self.startup,
            "setup_seconds": self.setup,
            "first_step_seconds": first_step,
            "training_seconds": self.training,
            "validation_seconds": self.validation,
            "checkpoint_seconds": self.checkpoints,
            "job_seconds": job,
            "overhead_fraction": 1 - steady / job,
        }


def describe_timings(timings: dict) -> str:
    parts = {
        "start-up": timings["startup_seconds"],
        "setup": timings["setup_seconds"],
        "first step": timings["first_step_seconds"],
        "validation": timings["validation_seconds"],
        "checkpoints": timings["checkpoint_seconds"],
    }
    listed = ", ".join(
        f"{name} {'?' if value is None else f'{value:.2f}'} s" for name, value in parts.items()
    )
    return (
        f"job {timings['job_seconds']:.1f} s, overhead {100 * timings['overhead_fraction']:.1f}% "
        f"outside steady training steps: {listed}"
    )


def process_age() -> float | None:
    """Seconds since this process started, from Linux's /proc (clock ticks, so 10 ms steps); None
    where that is unavailable."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_after_boot = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started_after_boot)


def compiled(model, runtime: dict):
    """``model`` under torch.compile (Inductor), with CUDA graphs when ``runtime`` asks for them."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # fall back to eager where compilation is unavailable
    return torch.compile(model, mode="reduce-overhead" if runtime["cuda_graphs"] else "default")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_finite(step_losses: torch.Tensor, epoch: int, first_iteration: int) -> None:
    finite = torch.isfinite(step_losses)
    if not bool(finite.all()):
        step = int((~finite).nonzero()[0])
        raise StudyError(
            f"training diverged: the loss became {step_losses[step].item()} at epoch {epoch}, iteration "
            f"{first_iteration + step + 1}; lower the learning rate or add a warm-up."
        )


def read_resume_state(path: Path, expected_hash: str) -> dict | None:
    if not path.exists():
        return None
    try:
        state = load_tensors(path)
    except Exception as error:  # a truncated or foreign file: any unpickling error means "not ours"
        log.warning("resume file %s is unreadable (%s): starting from scratch", path, error)
        path.unlink()
        return None
    if not isinstance(state, dict) or state.get("config_hash") != expected_hash:
        log.warning("resume file %s belongs to another configuration: starting from scratch", path)
        path.unlink()
        return None
    return state


def cpu_state(model: CifarResNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def write_history(path: Path, rows: list[dict]) -> None:
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions() -> dict:
    import numpy
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
