"""How a pipeline is timed: warm-up steps excluded, the median over timed repeats, on the monotonic
clock that all processes share, and the peak device memory over one measurement."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cifar_resnet.runtime import synchronize

RunChunk = Callable[[int, int], None]  # run_chunk(chunk_index, steps): that many steps of a pipeline


@dataclass(frozen=True)
class Protocol:
    """How a pipeline is timed: ``warmup_steps`` untimed steps, then ``repeats`` timed chunks of
    ``steps`` steps of ``batch_size`` images (per model)."""

    batch_size: int
    steps: int = 50
    repeats: int = 5
    warmup_steps: int = 10
    seed: int = 0


@dataclass(frozen=True)
class Measurement:
    images_per_s: float  # the median over the repeats
    peak_memory_mb: float
    repeats: int
    note: str = ""


def timed_spans(
    run_chunk: RunChunk, protocol: Protocol, device, before_repeat: Callable[[], object] = lambda: None
) -> list[tuple[float, float]]:
    """Run ``run_chunk(chunk_index, steps)`` once untimed for the warm-up, then ``repeats`` times timed,
    each after ``before_repeat()``; returns each timed repeat's (start, end) on the monotonic clock,
    which all processes share."""
    spans = []
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


def measure(run_chunk: RunChunk, images_per_step: int, protocol: Protocol, device) -> Measurement:
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


def check_chunk_size(protocol: Protocol, images: int) -> None:
    """Refuse a protocol whose longest chunk needs more images than one epoch of ``images`` holds."""
    steps = max(protocol.steps, protocol.warmup_steps)
    if steps * protocol.batch_size > images:
        raise ValueError(
            f"{steps} steps of {protocol.batch_size} need {steps * protocol.batch_size} images; "
            f"the data set has {images}"
        )
