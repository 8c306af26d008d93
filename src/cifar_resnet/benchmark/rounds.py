"""Interleaved rounds: the rows compared with each other (a group: ours in each mode and the classical
pipeline at one depth; packed, sequential and jobs at one depth and K) are built and warmed up one
after the other, each gets its steps per repeat from its measured step time, and then they take turns,
one timed repeat each per round (A, B, C, A, B, C, ...). A change of load on the machine between
rounds then moves every row of the round, and a ratio taken within a round cancels it."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from cifar_resnet.benchmark.timing import Pipeline, Protocol, Repeat, allocated_mb, timed_repeat

log = logging.getLogger(__name__)

# A repeat uses up at least this many times the batches a DataLoader prepared before it began, so that
# its figure is the pipeline's steady state and includes waiting for its workers.
PREFETCH_MULTIPLE = 10
PROBE_SHARE = 0.1  # the step time is measured over at least this share of a repeat's minimum length


@dataclass(frozen=True)
class Measured:
    """A row's figures: ``steps`` steps of ``images_per_step`` images in every round."""

    steps: int
    images_per_step: int
    repeats: tuple[Repeat, ...]  # one per round, in order
    peak_memory_mb: float
    note: str = ""

    @property
    def images_per_s(self) -> list[float]:
        return [self.steps * self.images_per_step / repeat.wall_seconds for repeat in self.repeats]

    @property
    def images_per_cpu_s(self) -> list[float]:
        return [self.steps * self.images_per_step / repeat.cpu_seconds for repeat in self.repeats]


def steps_for(step_seconds: float, min_seconds: float, prefetched: int) -> int:
    """Steps of one timed repeat: enough to last ``min_seconds`` at ``step_seconds`` a step, and to use
    up ``PREFETCH_MULTIPLE`` times the ``prefetched`` batches."""
    return max(1, math.ceil(min_seconds / step_seconds), PREFETCH_MULTIPLE * prefetched)


def step_seconds(pipeline: Pipeline, min_seconds: float) -> float:
    """The pipeline's seconds per step, timed over 1, 2, 4, ... steps until a probe lasts at least
    ``PROBE_SHARE`` of ``min_seconds``: one step of a fast GPU is too short to time."""
    steps = 1
    while True:
        wall = timed_repeat(pipeline, steps).wall_seconds
        if wall >= PROBE_SHARE * min_seconds:
            return wall / steps
        steps *= 2


def prepare(build: Callable[[], Pipeline], protocol: Protocol, device: torch.device) -> tuple[Pipeline, str]:
    """Build a row's pipeline and run its warm-up steps, untimed: compilation, CUDA graph capture and
    the DataLoader's first batches happen here. Returns it, with the device memory it holds from then on
    (``resident_mb``), and its note."""
    allocated = allocated_mb(device)
    pipeline = build()
    try:
        if protocol.warmup_steps:
            torch.set_num_threads(pipeline.threads)
            pipeline.run(protocol.warmup_steps)
        pipeline.resident_mb = allocated_mb(device) - allocated
        return pipeline, pipeline.check()
    except BaseException:
        pipeline.close()  # its workers or job processes would outlive it
        raise


def measure_group(
    builds: Sequence[Callable[[], Pipeline]], protocol: Protocol, device: torch.device
) -> list[Measured | str]:
    """Each build's figures over ``protocol.rounds`` interleaved rounds, or why it has none ("failed:"
    and the error): a row that fails leaves the others running."""
    failed: dict[int, str] = {}

    def attempt(index: int, action: Callable[[], object]) -> object:
        try:
            return action()
        except Exception as error:
            log.warning("row %d of its group failed: %s: %s", index + 1, type(error).__name__, error)
            failed[index] = f"failed: {type(error).__name__}: {error}"
            return None

    pipelines: dict[int, Pipeline] = {}
    notes: dict[int, str] = {}
    try:
        for index, build in enumerate(builds):
            prepared = attempt(index, partial(prepare, build, protocol, device))
            if prepared is not None:
                pipelines[index], notes[index] = prepared
        steps = {
            index: attempt(index, partial(repeat_steps, pipeline, protocol))
            for index, pipeline in pipelines.items()
        }
        repeats: dict[int, list[Repeat]] = {index: [] for index in pipelines}
        for _ in range(protocol.rounds):
            for index in [index for index in pipelines if index not in failed]:
                repeats[index].append(attempt(index, partial(timed_repeat, pipelines[index], steps[index])))
    finally:
        for pipeline in pipelines.values():
            pipeline.close()
    return [
        failed[index]
        if index in failed
        else Measured(
            steps[index],
            pipelines[index].images_per_step,
            tuple(repeats[index]),
            peak_of(pipelines[index], repeats[index]),
            notes[index],
        )
        for index in range(len(builds))
    ]


def repeat_steps(pipeline: Pipeline, protocol: Protocol) -> int:
    """The steps of the pipeline's timed repeats, from its measured step time (``steps_for``)."""
    return steps_for(step_seconds(pipeline, protocol.min_seconds), protocol.min_seconds, pipeline.prefetched)


def peak_of(pipeline: Pipeline, repeats: Sequence[Repeat]) -> float:
    """A row's peak device memory: what its processes counted themselves, or what it holds between its
    repeats plus the most a repeat allocated on top (the other rows of its group hold their own)."""
    if pipeline.own_peak_mb is not None:
        return pipeline.own_peak_mb()
    return pipeline.resident_mb + max(repeat.transient_mb for repeat in repeats)
