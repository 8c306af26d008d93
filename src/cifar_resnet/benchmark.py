"""Training speed on one device: images/s, seconds per 45k-image epoch and peak device memory per depth.

Three pipelines are measured on synthetic CIFAR-shaped data (random uint8 images, 10 classes), each
with warm-up steps excluded and the median over several timed repeats reported:

* ``ours``: the trainer's step loop, built from the trainer's own pieces (``make_optimizer``,
  ``autocast``, ``to_device``, ``memory_format_of``, ``compiled``, ``epoch_generator``,
  ``check_finite``, ``augment``, ``normalize``). The data lives on the device as uint8, each timed
  chunk of steps is ordered and augmented in one batched call, every batch is normalised on its own,
  and the loop never waits for the host until the chunk's closing finiteness check, as at the end of
  a training epoch. Its modes (``Mode``) switch torch.compile, bf16 autocast, channels_last and CUDA
  graphs.
* ``classical``: the way most CIFAR reproductions train: a torchvision-style dataset of uint8 HWC
  arrays returning PIL images, RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and Normalize
  in DataLoader workers, fp32, eager, and ``loss.item()`` after every step for the running loss,
  a host sync per step as in those repositories' logging.
* ``packed``, ``sequential`` and ``jobs``: K independent models of one architecture, each with its
  own initialisation, data order and augmentation, trained as one vmapped computation
  (``PackedModels``), one after the other in one process, or by K processes at once sharing the
  device (as Snakemake jobs under $CIFAR_RESNET_JOBS_PER_GPU); images/s is the aggregate over the K
  models.

Modes that do not act on the current device are not run but reported as "n/a on cpu": the trainer
enables bf16 and channels_last only on CUDA, so running them on the CPU would time fp32 NCHW under
another name, and CUDA graphs need CUDA. torch.compile does work on the CPU but takes minutes to
compile there, so it runs only when asked (``compile_on_cpu``).

Peak memory is ``torch.cuda.max_memory_allocated`` over one measurement, the device-resident dataset
included for ``ours`` and ``packed``; on the CPU it is not measured (NaN).
"""

from __future__ import annotations

import copy
import gc
import itertools
import logging
import os
import platform
import queue
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from tabulate import tabulate
from torch._dynamo.utils import counters
from torch.func import functional_call, stack_module_state, vmap
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cifar_resnet.augment import augment, normalize
from cifar_resnet.errors import StudyError
from cifar_resnet.files import atomic_output
from cifar_resnet.models import CifarResNet, ModelSpec, build_model
from cifar_resnet.optimizer import make_optimizer
from cifar_resnet.runtime import (
    autocast,
    compile_model,
    configure_backends,
    select_device,
    synchronize,
    to_device,
)
from cifar_resnet.summary import read_fields
from cifar_resnet.train import check_finite, epoch_seed, train_step

log = logging.getLogger(__name__)

EPOCH_IMAGES = 45_000  # the paper's training split
BATCH_SIZE = 128
NUM_CLASSES = 10
CROP_PADDING = 4
OPTIMIZER = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4}
# CIFAR-10's training-set channel statistics; for random images any fixed values measure the same work
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
IDENTITY = ["pipeline", "depth", "mode", "device", "machine", "batch_size", "steps", "warmup_steps"]
COLUMNS = [
    *IDENTITY,
    "images_per_s",
    "seconds_per_epoch",
    "peak_memory_mb",
    "repeats",
    "note",
]
OURS, CLASSICAL, PACKED, SEQUENTIAL, JOBS = "ours", "classical", "packed", "sequential", "jobs"
CUDA_ONLY_FLAGS = ("bf16", "channels_last", "cuda_graphs")


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
        if (
            first not in ("eager", "compile")
            or not set(flags) <= set(CUDA_ONLY_FLAGS)
            or len(set(flags)) < len(flags)
        ):
            raise ValueError(
                f"mode {name!r} is not eager or compile followed by +flags from {CUDA_ONLY_FLAGS}"
            )
        mode = cls(compile=first == "compile", **{flag: True for flag in flags})
        if mode.cuda_graphs and not mode.compile:
            raise ValueError(
                f"mode {name!r}: CUDA graphs come from torch.compile, write compile+...+cuda_graphs"
            )
        return mode

    @property
    def name(self) -> str:
        flags = [flag for flag in CUDA_ONLY_FLAGS if getattr(self, flag)]
        return "+".join(["compile" if self.compile else "eager", *flags])

    def runtime(self) -> dict:
        """The trainer's ``runtime`` section for this mode."""
        return {
            "bf16": self.bf16,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "cuda_graphs": self.cuda_graphs,
            "deterministic": False,
        }

    def unavailable_on(self, device: torch.device, compile_on_cpu: bool) -> str | None:
        """Why this mode is not run on ``device``, or None when it is."""
        if device.type == "cuda":
            return None
        cuda_only = [flag for flag in CUDA_ONLY_FLAGS if getattr(self, flag)]
        if cuda_only:
            return f"n/a on {device.type} (CUDA only: {', '.join(cuda_only)})"
        if self.compile and not compile_on_cpu:
            return f"n/a on {device.type} (compile is opt-in there: --compile-on-cpu)"
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


@dataclass(frozen=True)
class Protocol:
    """How a pipeline is timed: ``warmup_steps`` untimed steps, then ``repeats`` timed chunks of
    ``steps`` steps of ``batch_size`` images (per model)."""

    steps: int = 50
    repeats: int = 5
    warmup_steps: int = 10
    batch_size: int = BATCH_SIZE
    seed: int = 0


@dataclass(frozen=True)
class Measurement:
    images_per_s: float  # the median over the repeats
    peak_memory_mb: float
    repeats: int
    note: str = ""


# --- shared pieces -----------------------------------------------------------------------------


def synthetic_cifar(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random CIFAR-shaped data on the CPU: uint8 images [count,3,32,32] and int64 labels in [0, 10)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, NUM_CLASSES, (count,), generator=generator)


def on_device(data, protocol: Protocol, device: torch.device):
    """``data`` (one synthetic epoch when None) on ``device``, with the channel mean and std there."""
    images, labels = data or synthetic_cifar(EPOCH_IMAGES, protocol.seed)
    return (
        images.to(device),
        labels.to(device),
        torch.tensor(MEAN, device=device),
        torch.tensor(STD, device=device),
    )


def epoch_chunk(images, labels, models: int, steps: int, batch_size: int, generator: torch.Generator):
    """What the trainer draws at the start of an epoch, for ``steps`` steps and each of ``models``
    models: its own random order and one batched augmentation. Returns uint8 [models, steps*batch,
    3, 32, 32] and labels [models, steps*batch]."""
    count = steps * batch_size
    if count > len(labels):
        raise ValueError(f"{steps} steps of {batch_size} need {count} images; the data set has {len(labels)}")
    orders = [
        torch.randperm(len(labels), generator=generator, device=labels.device)[:count] for _ in range(models)
    ]
    orders = torch.stack(orders)
    chunk = augment(images[orders.flatten()], CROP_PADDING, True, generator)
    return chunk.view(models, count, *images.shape[1:]), labels[orders]


def new_model(depth: int, device: torch.device, runtime: dict) -> CifarResNet:
    model = to_device(build_model(ModelSpec(depth, NUM_CLASSES)), device, runtime)
    return model.train()


def timed_spans(
    run_chunk: Callable[[int, int], None],
    protocol: Protocol,
    device,
    before_repeat: Callable[[], object] = lambda: None,
) -> list[tuple[float, float]]:
    """Run ``run_chunk(chunk_index, steps)`` once untimed for the warm-up, then ``repeats`` times timed,
    each after ``before_repeat()``; returns each timed repeat's (start, end) on the monotonic clock,
    which all processes share. Compilation failures raise: the trainer's ``compiled`` would fall back
    to eager silently, and the benchmark would time eager under the name of a compiled mode."""
    spans = []
    with torch._dynamo.config.patch(suppress_errors=False):
        if protocol.warmup_steps:
            run_chunk(0, protocol.warmup_steps)
        for repeat in range(1, protocol.repeats + 1):
            before_repeat()
            synchronize(device)
            started = time.perf_counter()
            run_chunk(repeat, protocol.steps)
            synchronize(device)
            spans.append((started, time.perf_counter()))
    return spans


def measure(
    run_chunk: Callable[[int, int], None], images_per_step: int, protocol: Protocol, device
) -> Measurement:
    """The median throughput over ``timed_spans`` and the peak memory since ``start_memory_count``."""
    rates = [
        images_per_step * protocol.steps / (end - start)
        for start, end in timed_spans(run_chunk, protocol, device)
    ]
    return Measurement(statistics.median(rates), peak_memory_mb(device), protocol.repeats)


def start_memory_count(device: torch.device) -> None:
    """Free what earlier measurements left (compiled graphs keep their models and CUDA graph pools)."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


# --- our pipeline ------------------------------------------------------------------------------


def our_step(depth: int, mode: Mode, device: torch.device, protocol: Protocol, data=None) -> Callable:
    """The trainer's step loop for one fresh model in ``mode``, as ``run_chunk(chunk_index, steps)``;
    ``data`` (CPU tensors) defaults to one synthetic epoch."""
    runtime = mode.runtime()
    configure_backends(device, runtime)
    images, labels, mean, std = on_device(data, protocol, device)
    torch.manual_seed(protocol.seed)
    model = new_model(depth, device, runtime)
    optimizer = make_optimizer(model.parameters(), OPTIMIZER, device)
    forward = compile_model(model, runtime) if mode.compile else model
    batch_size = protocol.batch_size

    def run_chunk(index: int, steps: int) -> None:
        generator = torch.Generator(device=device).manual_seed(epoch_seed(protocol.seed, index))
        chunk_images, chunk_labels = epoch_chunk(images, labels, 1, steps, batch_size, generator)
        step_losses = torch.empty(steps, device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)  # the trainer's accuracy bookkeeping
        for step in range(steps):
            batch_images = chunk_images[0, step * batch_size : (step + 1) * batch_size]
            batch_labels = chunk_labels[0, step * batch_size : (step + 1) * batch_size]
            loss, logits = train_step(
                forward, optimizer, batch_images, batch_labels, mean, std, device, runtime
            )
            step_losses[step] = loss
            correct += (logits.argmax(1) == batch_labels).sum()
        check_finite(step_losses, index, 0)

    return run_chunk


def our_step_throughput(
    depth: int, mode: Mode, device: torch.device, protocol: Protocol = Protocol(), data=None
) -> Measurement:
    """Images/s of the trainer's step loop in ``mode``."""
    start_memory_count(device)
    run_chunk = our_step(depth, mode, device, protocol, data)
    skipped_before = counters["inductor"]["cudagraph_skips"]
    measured = measure(run_chunk, protocol.batch_size, protocol, device)
    if mode.cuda_graphs and counters["inductor"]["cudagraph_skips"] > skipped_before:
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


def classical_transform() -> transforms.Compose:
    steps = [transforms.RandomCrop(32, padding=CROP_PADDING), transforms.RandomHorizontalFlip()]
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def classical_loader(images, labels, batch_size: int, num_workers: int, device, seed: int = 0) -> DataLoader:
    """A shuffling DataLoader over ``images`` (uint8 [N,3,H,W], turned into the HWC arrays torchvision
    keeps) with the classical transforms in ``num_workers`` worker processes."""
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    return DataLoader(
        ClassicalCifar(hwc, labels.numpy(), classical_transform()),
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
    depth: int,
    device: torch.device,
    protocol: Protocol = Protocol(),
    num_workers: int | None = None,
    data=None,
) -> Measurement:
    """Images/s of the classical DataLoader pipeline, fp32 and eager, with the same model and optimizer."""
    runtime = Mode().runtime()
    configure_backends(device, runtime)
    start_memory_count(device)
    images, labels = data or synthetic_cifar(EPOCH_IMAGES, protocol.seed)
    workers = default_workers() if num_workers is None else num_workers
    batches = endless(classical_loader(images, labels, protocol.batch_size, workers, device, protocol.seed))
    torch.manual_seed(protocol.seed)
    model = new_model(depth, device, runtime)
    optimizer = make_optimizer(model.parameters(), OPTIMIZER, device)

    def run_chunk(_index: int, steps: int) -> None:
        running_loss = 0.0
        for _ in range(steps):
            batch_images, batch_labels = next(batches)
            batch_images = batch_images.to(device, non_blocking=True)
            batch_labels = batch_labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(batch_images), batch_labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()

    try:
        return measure(run_chunk, protocol.batch_size, protocol, device)
    finally:
        batches.close()  # stops the worker processes now rather than at garbage collection


# --- many small models per device ------------------------------------------------------------


class PackedModels:
    """K models of one architecture trained as one computation: their parameters and buffers are
    stacked along a new leading dimension (``stack_module_state``) and ``vmap`` maps
    ``functional_call`` over the K sets, so every convolution runs as one grouped convolution and every
    BatchNorm as one wider BatchNorm. The K losses are independent, so the gradient of their sum is
    each model's own gradient, and SGD over the stacked tensors (momentum and weight decay act
    elementwise) is K separate SGDs.

    BatchNorm in training mode updates its running statistics in place. vmap refuses that when the
    running statistics are shared by all K models ("Batch norm got a batched tensor as input while the
    running_mean or running_var, which will be updated in place, were not batched"). Here they are
    stacked buffers mapped like the parameters (in_dims 0), so each model updates its own in place
    and keeps the eval-mode behaviour of an ordinary model. ``torch.func.replace_all_batch_norm_modules_``
    would also remove the error, but by dropping the running statistics altogether: evaluation would
    then normalise with each test batch's own statistics, which is not the model the trainer produces.

    channels_last does not apply (the input is 5-D) and CUDA graphs are not offered.
    """

    def __init__(self, models: Sequence[CifarResNet], device: torch.device, runtime: dict):
        self.device, self.runtime = device, runtime
        self.template = copy.deepcopy(models[0]).to("meta").train()
        self.params, self.buffers = stack_module_state(list(models))
        self.optimizer = make_optimizer(list(self.params.values()), OPTIMIZER, device)
        losses = vmap(self._loss, randomness="different")  # each model its own dropout masks
        self.losses = compile_model(losses, runtime) if runtime["compile"] else losses

    def _loss(self, params, buffers, images, labels):
        logits = functional_call(self.template, (params, buffers), (images,))
        return F.cross_entropy(logits.float(), labels), logits

    def step(self, images, labels, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of every model on its own uint8 batch [K,B,3,H,W]; returns losses [K], logits [K,B,C]."""
        with autocast(self.device, self.runtime):
            losses, logits = self.losses(self.params, self.buffers, normalize(images, mean, std), labels)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach(), logits

    def state_dict_of(self, index: int) -> dict[str, torch.Tensor]:
        """Model ``index``'s state, as its own ``state_dict()`` would give it."""
        return {name: tensor[index].detach() for name, tensor in {**self.params, **self.buffers}.items()}


def packing_mode(name: str | None, device: torch.device) -> Mode:
    """The mode named (bf16 on CUDA and fp32 elsewhere when None), checked to be one packing supports."""
    mode = Mode.parse(name) if name else Mode(bf16=device.type == "cuda")
    if mode.channels_last or mode.cuda_graphs:
        raise ValueError(f"packed training runs eager or compiled, with or without bf16, not {mode.name}")
    return mode


def packed_throughput(
    depth: int,
    models: int,
    device: torch.device,
    protocol: Protocol = Protocol(),
    mode: Mode | None = None,
    packed: bool = True,
    data=None,
) -> Measurement:
    """Aggregate images/s of ``models`` independent models, each with its own batches, trained by one
    vmapped step (``packed``) or by ordinary steps one model after the other."""
    mode = packing_mode(mode.name if mode else None, device)
    runtime = mode.runtime()
    configure_backends(device, runtime)
    start_memory_count(device)
    images, labels, mean, std = on_device(data, protocol, device)
    torch.manual_seed(protocol.seed)
    members = [new_model(depth, device, runtime) for _ in range(models)]
    step_all = (
        packed_step(members, mean, std, device, runtime)
        if packed
        else sequential_step(members, mean, std, device, runtime)
    )
    batch_size = protocol.batch_size

    def run_chunk(index: int, steps: int) -> None:
        generator = torch.Generator(device=device).manual_seed(epoch_seed(protocol.seed, index))
        chunk_images, chunk_labels = epoch_chunk(images, labels, models, steps, batch_size, generator)
        step_losses = torch.empty(steps, models, device=device)
        for step in range(steps):
            batch = slice(step * batch_size, (step + 1) * batch_size)
            step_losses[step] = step_all(chunk_images[:, batch], chunk_labels[:, batch])
        check_finite(step_losses.flatten(), index, 0)

    return measure(run_chunk, models * batch_size, protocol, device)


def packed_step(members, mean, std, device, runtime) -> Callable:
    """One vmapped step of all models on their batches [K,B,...]; returns the K losses."""
    packed = PackedModels(members, device, runtime)
    return lambda images, labels: packed.step(images, labels, mean, std)[0]


def sequential_step(members, mean, std, device, runtime) -> Callable:
    """One ordinary step of each model in turn on its batch of [K,B,...]; returns the K losses."""
    forwards = [compile_model(member, runtime) if runtime["compile"] else member for member in members]
    optimizers = [make_optimizer(member.parameters(), OPTIMIZER, device) for member in members]

    def step_all(images, labels):
        steps = zip(forwards, optimizers, images, labels, strict=True)
        return torch.stack([train_step(*step, mean, std, device, runtime)[0] for step in steps])

    return step_all


def concurrent_jobs_throughput(
    depth: int,
    jobs: int,
    device: torch.device,
    protocol: Protocol = Protocol(),
    mode: Mode | None = None,
    data=None,
) -> Measurement:
    """Aggregate images/s of ``jobs`` training processes sharing ``device``, each running our step on
    its own model and batches, as Snakemake jobs do under $CIFAR_RESNET_JOBS_PER_GPU. The processes
    start every timed repeat together; a repeat's figure is all their images over the time from the
    first start to the last end, and the median over the repeats is reported. Peak memory is the sum
    of the processes' peaks."""
    mode = packing_mode(mode.name if mode else None, device)
    spans, peaks = run_concurrent_jobs(depth, jobs, device, protocol, mode, data)
    images_per_repeat = jobs * protocol.steps * protocol.batch_size
    rates = [
        images_per_repeat / (max(end for _, end in repeat) - min(start for start, _ in repeat))
        for repeat in zip(*spans, strict=True)
    ]
    return Measurement(statistics.median(rates), sum(peaks), protocol.repeats)


def run_concurrent_jobs(
    depth: int, jobs: int, device: torch.device, protocol: Protocol, mode: Mode, data=None
) -> tuple[list[list[tuple[float, float]]], list[float]]:
    """Run our step in ``jobs`` processes at once; returns each one's (start, end) per timed repeat, on
    the clock all processes share, and its peak memory. Raises RuntimeError when any process fails."""
    data = data or synthetic_cifar(EPOCH_IMAGES, protocol.seed)
    context = torch.multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    barrier, results = context.Barrier(jobs), context.Queue()
    processes = [
        context.Process(
            target=timed_job,
            args=(
                index,
                depth,
                mode.name,
                str(device),
                protocol,
                data,
                torch.get_num_threads(),
                barrier,
                results,
            ),
        )
        for index in range(jobs)
    ]
    for process in processes:
        process.start()
    outcomes = {}
    try:
        while len(outcomes) < jobs:
            try:
                index, spans, peak, error = results.get(timeout=1.0)
            except queue.Empty:
                crashed = [process.exitcode for process in processes if process.exitcode not in (None, 0)]
                if crashed:
                    raise RuntimeError(
                        f"a concurrent training process died with exit code {crashed[0]}"
                    ) from None
                continue
            if error:
                raise RuntimeError(f"concurrent training process {index} of {jobs} failed: {error}")
            outcomes[index] = spans, peak
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    return [outcomes[index][0] for index in range(jobs)], [outcomes[index][1] for index in range(jobs)]


def timed_job(index, depth, mode_name, device_name, protocol, data, threads, barrier, results) -> None:
    """One process of ``run_concurrent_jobs``: its own model, initialisation and data order (seed + index)."""
    try:
        torch.set_num_threads(threads)
        device = torch.device(device_name)
        own = replace(protocol, seed=protocol.seed + index)
        run_chunk = our_step(depth, Mode.parse(mode_name), device, own, data)
        spans = timed_spans(run_chunk, protocol, device, before_repeat=barrier.wait)
        results.put((index, spans, peak_memory_mb(device), None))
    except BaseException as error:  # report it: the parent would otherwise wait for this process
        barrier.abort()
        results.put((index, None, None, f"{type(error).__name__}: {error}"))


# --- the whole benchmark -----------------------------------------------------------------------


def resolve_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else select_device(device)


def run_benchmark(
    depths: Sequence[int],
    modes: Sequence[str] = DEFAULT_MODES,
    steps: int = 50,
    repeats: int = 5,
    device: str | torch.device = "auto",
    *,
    warmup_steps: int = 10,
    batch_size: int = BATCH_SIZE,
    num_workers: int | None = None,
    packed_models: Sequence[int] = (1, 4, 8),
    packed_batch_size: int | None = None,
    packed_mode: str | None = None,
    compile_on_cpu: bool = False,
    dataset_size: int = EPOCH_IMAGES,
    seed: int = 0,
    earlier: pd.DataFrame | None = None,
    earlier_source: str = "the earlier run",
    progress: Callable[[pd.DataFrame], None] = lambda frame: None,
) -> pd.DataFrame:
    """One row per pipeline, depth and mode: ours in each of ``modes``, the classical pipeline, and
    packed, sequential and concurrent-process training of K models for each K in ``packed_models``, in
    ``packed_mode`` (bf16 on CUDA, fp32 elsewhere, unless given) at ``packed_batch_size`` images per
    model and step (``batch_size`` unless given). Modes that do not apply on the device give a row with an
    "n/a on ..." note and no figures, and a measurement that raises gives one whose note begins with
    "failed:", so that one broken mode does not cost the others.

    ``earlier`` (the rows of an interrupted run of the same command, read from ``earlier_source``)
    resumes that run: its rows with figures are kept, not measured again. ``progress`` receives the
    rows so far after each one."""
    device = resolve_device(device)
    ours = [Mode.parse(name) for name in modes]
    packed = packing_mode(packed_mode, device)
    workers = default_workers() if num_workers is None else num_workers
    protocol = Protocol(steps, repeats, warmup_steps, batch_size, seed)
    packed_protocol = replace(protocol, batch_size=packed_batch_size or batch_size)
    data = synthetic_cifar(dataset_size, seed)
    machine = describe_machine(device)

    def planned(pipeline: str, depth: int, mode: str, run_protocol: Protocol, models: int, job) -> Planned:
        keys = {
            "pipeline": pipeline,
            "depth": depth,
            "mode": mode,
            "device": device.type,
            "machine": machine,
            "batch_size": run_protocol.batch_size,
            "steps": run_protocol.steps,
            "warmup_steps": run_protocol.warmup_steps,
        }
        return Planned(keys, models, job)

    plan = []
    for depth in depths:
        for mode in ours:
            job = mode.unavailable_on(device, compile_on_cpu) or partial(
                our_step_throughput, depth, mode, device, protocol, data
            )
            plan.append(planned(OURS, depth, mode.name, protocol, 1, job))
        job = partial(classical_throughput, depth, device, protocol, workers, data)
        plan.append(planned(CLASSICAL, depth, f"eager, {workers} workers", protocol, 1, job))
        for models, pipeline in itertools.product(packed_models, (PACKED, SEQUENTIAL, JOBS)):
            arguments = (depth, models, device, packed_protocol, packed)
            job = packed.unavailable_on(device, compile_on_cpu) or (
                partial(concurrent_jobs_throughput, *arguments, data)
                if pipeline == JOBS
                else partial(packed_throughput, *arguments, pipeline == PACKED, data)
            )
            plan.append(planned(pipeline, depth, f"{packed.name}, K={models}", packed_protocol, models, job))

    kept = resumable_rows(earlier, plan, repeats, earlier_source)
    rows = []
    for step in plan:
        if step.identity in kept:
            log.info("%s: kept from the earlier run", step.label)
            rows.append(kept[step.identity])
        else:
            rows.append(step.run())
        progress(pd.DataFrame(rows, columns=COLUMNS))
    return pd.DataFrame(rows, columns=COLUMNS)


@dataclass(frozen=True)
class Planned:
    """One row of a benchmark run: its ``IDENTITY`` columns, and what gives its figures (a measurement
    to run, or the reason there is none)."""

    keys: dict
    models: int
    job: Callable[[], Measurement] | str

    @property
    def identity(self) -> tuple:
        return tuple(self.keys[column] for column in IDENTITY)

    @property
    def label(self) -> str:
        return f"ResNet-{self.keys['depth']} {self.keys['pipeline']} {self.keys['mode']}"

    def run(self) -> dict:
        """The row: the measurement's figures, or the reason or error that left it without any. Seconds
        per epoch is the time for each of the ``models`` models to see 45,000 images."""
        result = self.job
        if not isinstance(result, str):
            try:
                result = self.job()
            except Exception as error:
                log.warning("%s failed: %s: %s", self.label, type(error).__name__, error)
                result = f"failed: {type(error).__name__}: {error}"
        if isinstance(result, str):
            log.info("%s: %s", self.label, result)
            missing = float("nan")
            figures = {"images_per_s": missing, "seconds_per_epoch": missing, "peak_memory_mb": missing}
            return {**self.keys, **figures, "repeats": 0, "note": result}
        log.info("%s: %.0f images/s", self.label, result.images_per_s)
        return {
            **self.keys,
            "images_per_s": result.images_per_s,
            "seconds_per_epoch": self.models * EPOCH_IMAGES / result.images_per_s,
            "peak_memory_mb": result.peak_memory_mb,
            "repeats": result.repeats,
            "note": result.note,
        }


def resumable_rows(
    earlier: pd.DataFrame | None, plan: Sequence[Planned], repeats: int, source: str = "the earlier run"
) -> dict[tuple, dict]:
    """The rows of ``earlier`` (read from ``source``) with figures, by identity, when each is a row of
    ``plan`` measured with ``repeats`` repeats. Raises StudyError, before anything is measured, when
    some are not: resuming would drop figures that this run does not measure again."""
    if earlier is None:
        return {}
    missing = [column for column in COLUMNS if column not in earlier.columns]
    if missing:
        raise StudyError(
            f"{source} lacks the column(s) {', '.join(missing)}: it comes from another version of the "
            "benchmark; move it away or write to another folder."
        )
    planned = {step.identity for step in plan}
    kept, foreign = {}, []
    for record in earlier[earlier["images_per_s"].notna()][COLUMNS].to_dict("records"):
        identity = tuple(record[column] for column in IDENTITY)
        if identity in planned and record["repeats"] == repeats:
            kept[identity] = record
        else:
            foreign.append(record)
    if foreign:
        first = foreign[0]
        raise StudyError(
            f"{source} holds {len(foreign)} measured row(s) that this command would not measure "
            f"(the first: ResNet-{first['depth']} {first['pipeline']} {first['mode']}, batch "
            f"{first['batch_size']}, {first['steps']} steps after {first['warmup_steps']} warm-up steps, "
            f"{first['repeats']} repeats, on {first['machine']}); resume with the command and machine "
            "that wrote them, or write to another folder."
        )
    return kept


def read_results(csv_path) -> pd.DataFrame:
    """The benchmark's CSV, with its empty notes as empty strings."""
    frame = pd.read_csv(csv_path, keep_default_na=False, na_values=[""], dtype={"note": str})
    return frame.fillna({"note": ""}) if "note" in frame.columns else frame


def failures(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["note"].str.startswith("failed:")]


def ratio_to_classical(frame: pd.DataFrame) -> pd.DataFrame:
    """Per depth: our fastest measured mode, its images/s, the classical pipeline's and their ratio."""
    measured = frame.dropna(subset=["images_per_s"])
    ours = measured[measured["pipeline"] == OURS]
    best = ours.loc[ours.groupby("depth")["images_per_s"].idxmax(), ["depth", "mode", "images_per_s"]]
    classical = measured[measured["pipeline"] == CLASSICAL][["depth", "images_per_s"]]
    table = best.merge(classical, on="depth", suffixes=("", "_classical"))
    table = table.rename(columns={"mode": "best_mode", "images_per_s_classical": "classical_images_per_s"})
    table["ratio"] = table["images_per_s"] / table["classical_images_per_s"]
    return table.reset_index(drop=True)


def sharing_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Per depth and K: the aggregate images/s of K models packed into one step, trained one after the
    other, and trained by K processes at once; which wins, and its margin over the runner-up."""
    measured = frame[frame["pipeline"].isin([PACKED, SEQUENTIAL, JOBS])].dropna(subset=["images_per_s"])
    measured = measured.assign(K=measured["mode"].str.extract(r"K=(\d+)", expand=False).astype(int))
    table = measured.pivot_table(index=["depth", "K"], columns="pipeline", values="images_per_s")
    rates = table.reindex(columns=[PACKED, SEQUENTIAL, JOBS])
    table = rates.assign(winner=rates.idxmax(axis=1), margin=rates.apply(margin_over_runner_up, axis=1))
    return table.reset_index().rename_axis(columns=None)


def margin_over_runner_up(rates: pd.Series) -> float:
    best_two = rates.dropna().nlargest(2)
    return best_two.iloc[0] / best_two.iloc[1] if len(best_two) == 2 else float("nan")


def write_plot(frame: pd.DataFrame, plot_path) -> bool:
    """Images/s against depth, one line per pipeline and mode, on a log y-axis; False when no row has
    figures to draw."""
    measured = frame.dropna(subset=["images_per_s"]).assign(
        run=lambda rows: rows["pipeline"] + ": " + rows["mode"] + ", batch " + rows["batch_size"].astype(str)
    )
    if measured.empty:
        return False
    depths = sorted(measured["depth"].unique())
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        figure = Figure(figsize=(10, 4.5), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        sns.lineplot(
            measured, x="depth", y="images_per_s", hue="run", style="pipeline", markers=True, ax=axes
        )
        axes.set_yscale("log")
        axes.set_xticks(depths, [f"ResNet-{depth}" for depth in depths])
        devices = ", ".join(sorted(measured["device"].unique()))
        axes.set(
            xlabel="Depth", ylabel="Training images/s (log scale)", title=f"Training throughput on {devices}"
        )
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        with atomic_output(plot_path) as temporary:
            figure.savefig(temporary, format="png", dpi=120)
    return True


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        hardware = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        hardware = f"{cpu_model()}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"
    return f"{hardware}, torch {torch.__version__}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown_table(frame: pd.DataFrame) -> str:
    """The rows as a GitHub table with readable numbers; rows without figures show their note."""
    shown = frame.drop(columns=["device", "machine", "steps", "warmup_steps"]).assign(
        images_per_s=frame["images_per_s"].map("{:,.0f}".format),
        seconds_per_epoch=frame["seconds_per_epoch"].map("{:,.1f}".format),
        peak_memory_mb=frame["peak_memory_mb"].map("{:,.0f}".format),
    )
    shown = shown.replace("nan", "—")
    return tabulate(shown, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)


def sharing_table(frame: pd.DataFrame) -> str:
    shown = sharing_comparison(frame)
    for column in (PACKED, SEQUENTIAL, JOBS):
        shown[column] = shown[column].map("{:,.0f}".format).replace("nan", "—")
    shown["margin"] = shown["margin"].map("{:.2f}x".format).replace("nanx", "—")
    return tabulate(shown, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)


def ratio_table(frame: pd.DataFrame) -> str:
    ratios = ratio_to_classical(frame).assign(
        images_per_s=lambda table: table["images_per_s"].map("{:,.0f}".format),
        classical_images_per_s=lambda table: table["classical_images_per_s"].map("{:,.0f}".format),
        ratio=lambda table: table["ratio"].map("{:.2f}x".format),
    )
    return tabulate(ratios, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)


# --- real jobs against the targets -----------------------------------------------------

PAPER_ITERATIONS = 64_000
TIMED_FIELDS = (
    "dataset",
    "variant",
    "depth",
    "seed",
    "device",
    "iterations",
    "train_seconds",
    "images_per_s",
    "timings",
)
FIVE_DEPTHS = (20, 32, 44, 56, 110)


def job_timings(summaries: Sequence) -> pd.DataFrame:
    """One row per training job from its ``train.json``: its training time, that time scaled to the
    paper's 64k iterations, its job time from process start and its overhead fraction."""
    rows = []
    for path in summaries:
        summary = read_fields(Path(path), TIMED_FIELDS)
        timings = summary.pop("timings")
        rows.append(
            {
                **summary,
                "seconds_per_64k": summary["train_seconds"] * PAPER_ITERATIONS / summary["iterations"],
                "job_seconds": timings["job_seconds"],
                "overhead_fraction": timings["overhead_fraction"],
            }
        )
    if not rows:
        raise StudyError("no train.json to read: train some runs first.")
    return pd.DataFrame(rows).sort_values(["dataset", "variant", "seed", "depth"], ignore_index=True)


def target_verdicts(timings: pd.DataFrame) -> pd.DataFrame:
    """The issue's per-job targets, judged on the ``paper`` runs of ``job_timings`` that trained the
    paper's full 64k iterations, for each dataset, seed and device: ResNet-20 in at most 90 s of
    training with at most 10 % overhead, ResNet-110 in at most 10 minutes, and the five depths' jobs
    in at most 15 minutes together."""
    full = timings[(timings["variant"] == "paper") & (timings["iterations"] == PAPER_ITERATIONS)]
    verdicts = []
    for (dataset, seed, device), jobs in full.groupby(["dataset", "seed", "device"]):
        by_depth = jobs.set_index("depth")
        checks = []
        if 20 in by_depth.index:
            checks.append(("ResNet-20 training", by_depth.loc[20, "train_seconds"], 90.0, "s"))
            checks.append(("ResNet-20 job overhead", 100 * by_depth.loc[20, "overhead_fraction"], 10.0, "%"))
        if 110 in by_depth.index:
            checks.append(("ResNet-110 training", by_depth.loc[110, "train_seconds"], 600.0, "s"))
        if set(FIVE_DEPTHS) <= set(by_depth.index):
            total = by_depth.loc[list(FIVE_DEPTHS), "job_seconds"].sum()
            checks.append(("the five depths' jobs together", total, 900.0, "s"))
        for target, measured, limit, unit in checks:
            verdicts.append(
                {
                    "dataset": dataset,
                    "seed": seed,
                    "device": device,
                    "target": target,
                    "measured": f"{measured:,.1f} {unit}",
                    "limit": f"{limit:,.0f} {unit}",
                    "met": "yes" if measured <= limit else "no",
                }
            )
    return pd.DataFrame(verdicts, columns=["dataset", "seed", "device", "target", "measured", "limit", "met"])
