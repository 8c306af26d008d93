"""The clocks of one timed repeat: wall seconds on the monotonic clock that all processes share, CPU
seconds of this process and its worker or job processes, and the device memory it allocated on top of
what was already there. A ``Pipeline`` is one row's training loop, built and ready to run."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cifar_resnet.runtime import synchronize

Span = tuple[float, float]  # (start, end) on the monotonic clock


@dataclass(frozen=True)
class Protocol:
    """How the rows are timed (``rounds``): ``warmup_steps`` untimed steps, then ``rounds`` timed repeats
    of each row in turn, each repeat at least ``min_seconds`` long, at ``batch_size`` images (per model)."""

    batch_size: int
    min_seconds: float = 1.0
    rounds: int = 3
    warmup_steps: int = 10
    seed: int = 0


@dataclass
class Pipeline:
    """One row's training loop, built: ``run(steps)`` trains that many steps and returns None, or the
    span of the work when processes other than this one did it (the jobs, which start at a barrier)."""

    run: Callable[[int], Span | None]
    images_per_step: int
    device: torch.device
    threads: int  # torch's threads in this process while the row runs
    prefetched: int = 0  # batches a DataLoader holds ready before a step asks for them
    close: Callable[[], None] = lambda: None
    check: Callable[[], str] = lambda: ""  # after the warm-up: a note for the row, or ""
    own_peak_mb: Callable[[], float] | None = None  # for processes that count their own memory
    resident_mb: float = 0.0  # device memory it holds between its repeats (set once warmed up)


@dataclass(frozen=True)
class Repeat:
    """One timed repeat of a pipeline."""

    wall_seconds: float
    cpu_seconds: float  # this process and its child processes; NaN where /proc is missing
    transient_mb: float  # device memory allocated during the repeat on top of what it started with


def timed_repeat(pipeline: Pipeline, steps: int) -> Repeat:
    """``pipeline.run(steps)`` between two device synchronisations, on the row's thread count."""
    torch.set_num_threads(pipeline.threads)
    device = pipeline.device
    synchronize(device)
    allocated = start_peak_count(device)
    cpu_started, started = cpu_seconds(), time.perf_counter()
    span = pipeline.run(steps)
    synchronize(device)
    ended, cpu_ended = time.perf_counter(), cpu_seconds()
    if span is not None:
        started, ended = span
    return Repeat(ended - started, cpu_ended - cpu_started, peak_memory_mb(device) - allocated)


def cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) and of its live child processes (DataLoader
    workers, job processes). ``os.times`` and ``RUSAGE_CHILDREN`` count a child only once it has exited
    and been waited for, and these live through all repeats, so theirs are read from Linux's /proc."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return float("nan")
    children = {pid for task in tasks.iterdir() for pid in (task / "children").read_text().split()}
    return time.process_time() + sum(process_cpu_seconds(int(pid)) for pid in children)


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` (/proc/PID/stat), 0 if it has just exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def start_memory_count(device: torch.device) -> None:
    """Free what earlier rows left (compiled graphs keep their models and CUDA graph pools)."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def allocated_mb(device: torch.device) -> float:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def start_peak_count(device: torch.device) -> float:
    """Reset the peak counter; returns what is allocated now, in MiB."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return allocated_mb(device)


def peak_memory_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
