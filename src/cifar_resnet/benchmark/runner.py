"""A whole benchmark run: the plan of rows (pipeline x depth x mode) in groups measured in interleaved
rounds, each row measured or given the reason it has no figures, on equal cores within a group, the
groups of an interrupted run kept on ``--resume``, and the CSV they are written to."""

from __future__ import annotations

import itertools
import logging
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import pandas as pd
import torch

from cifar_resnet.benchmark.data import EPOCH_IMAGES, synthetic_data
from cifar_resnet.benchmark.jobs import jobs_pipeline
from cifar_resnet.benchmark.modes import DEFAULT_MODES, Mode, packing_mode
from cifar_resnet.benchmark.packing import k_model_pipeline
from cifar_resnet.benchmark.pipelines import classical_pipeline, default_workers, our_pipeline
from cifar_resnet.benchmark.rounds import Measured, measure_group
from cifar_resnet.benchmark.settings import Settings, load_settings
from cifar_resnet.benchmark.timing import Pipeline, Protocol, start_memory_count
from cifar_resnet.errors import StudyError
from cifar_resnet.provenance import cpu_model, describe_device
from cifar_resnet.runtime import select_device

log = logging.getLogger(__name__)

IDENTITY = [
    "pipeline",
    "depth",
    "mode",
    "device",
    "machine",
    "batch_size",
    "cores",
    "warmup_steps",
    "min_seconds",
    "rounds",
]
FIGURES = [
    "steps",  # per timed repeat, from the row's measured step time
    "images_per_s",  # the median over the rounds, then its range
    "images_per_s_min",
    "images_per_s_max",
    "images_per_cpu_s",  # the median over the rounds: images over the CPU seconds of all its processes
    "wall_seconds",  # of one repeat, the median over the rounds
    "cpu_seconds",
    "seconds_per_epoch",
    "peak_memory_mb",
    "images_per_s_by_round",  # each round's figure, ";"-separated: ratios are taken within a round
    "images_per_cpu_s_by_round",
]
COLUMNS = [*IDENTITY, *FIGURES, "note"]
OURS, CLASSICAL, PACKED, SEQUENTIAL, JOBS = "ours", "classical", "packed", "sequential", "jobs"


@dataclass(frozen=True)
class Planned:
    """One row of a benchmark run: its ``IDENTITY`` columns, and what gives its figures (a pipeline to
    build, or the reason there is none)."""

    keys: dict
    models: int
    build: Callable[[], Pipeline] | str

    @property
    def identity(self) -> tuple:
        return tuple(self.keys[column] for column in IDENTITY)

    @property
    def label(self) -> str:
        return f"ResNet-{self.keys['depth']} {self.keys['pipeline']} {self.keys['mode']}"

    def row(self, outcome: Measured | str) -> dict:
        """The row: the figures over the rounds, or the reason or error that left it without any.
        Seconds per epoch is the time for each of the ``models`` models to see 45,000 images."""
        if isinstance(outcome, str):
            log.info("%s: %s", self.label, outcome)
            return {**self.keys, **dict.fromkeys(FIGURES, float("nan")), "note": outcome}
        rates, cpu_rates = outcome.images_per_s, outcome.images_per_cpu_s
        median = statistics.median(rates)
        log.info("%s: %.0f images/s (%.0f-%.0f)", self.label, median, min(rates), max(rates))
        return {
            **self.keys,
            "steps": outcome.steps,
            "images_per_s": median,
            "images_per_s_min": min(rates),
            "images_per_s_max": max(rates),
            "images_per_cpu_s": statistics.median(cpu_rates),
            "wall_seconds": statistics.median(repeat.wall_seconds for repeat in outcome.repeats),
            "cpu_seconds": statistics.median(repeat.cpu_seconds for repeat in outcome.repeats),
            "seconds_per_epoch": self.models * EPOCH_IMAGES / median,
            "peak_memory_mb": outcome.peak_memory_mb,
            "images_per_s_by_round": by_round(rates),
            "images_per_cpu_s_by_round": by_round(cpu_rates),
            "note": outcome.note,
        }


def by_round(figures: Sequence[float]) -> str:
    return ";".join(f"{figure:.6g}" for figure in figures)


def rounds_of(text: str) -> list[float]:
    """The figures ``by_round`` wrote."""
    return [float(figure) for figure in str(text).split(";")]


@dataclass(frozen=True)
class Bench:
    """What every row of one benchmark run shares."""

    device: torch.device
    machine: str  # describe_machine(device)
    data: dict  # the synthetic prepared dataset, on the CPU
    settings: Settings
    workers: int  # the classical pipeline's DataLoader workers
    cores: int  # per row: torch threads plus worker or job processes

    def planned(
        self, pipeline: str, depth: int, mode: str, protocol: Protocol, cores: int, models: int, build
    ) -> Planned:
        keys = {
            "pipeline": pipeline,
            "depth": depth,
            "mode": mode,
            "device": self.device.type,
            "machine": self.machine,
            "batch_size": protocol.batch_size,
            "cores": cores,
            "warmup_steps": protocol.warmup_steps,
            "min_seconds": protocol.min_seconds,
            "rounds": protocol.rounds,
        }
        return Planned(keys, models, build)


def classical_threads(cores: int, workers: int) -> int:
    """The classical pipeline's torch threads, so that with its workers it uses ``cores`` cores (at
    least one thread: with ``workers`` >= ``cores`` it uses more than our rows, and no ratio pairs them)."""
    return max(1, cores - workers)


def job_threads(cores: int, models: int) -> int:
    """Torch threads of each of ``models`` job processes sharing ``cores`` (at least one). Packed and
    sequential get ``models`` times as many, so that the three rows of one K use equal cores."""
    return max(1, cores // models)


def plan(
    bench: Bench,
    depths: Sequence[int],
    modes: Sequence[Mode],
    protocol: Protocol,
    packed: Mode,
    packed_models: Sequence[int],
    packed_protocol: Protocol,
) -> list[list[Planned]]:
    """The groups of rows, each measured in interleaved rounds, in order of value: per depth, ours in
    each of ``modes`` with the classical pipeline; then per depth and K in ``packed_models``, packed,
    sequential and jobs."""
    device, data, settings, cores = bench.device, bench.data, bench.settings, bench.cores
    groups = []
    for depth in depths:
        group = []
        for mode in modes:
            build = mode.unavailable_on(device, settings.runtime) or partial(
                our_pipeline, depth, mode, device, protocol, data, settings, cores
            )
            group.append(bench.planned(OURS, depth, mode.name, protocol, cores, 1, build))
        threads = classical_threads(cores, bench.workers)
        build = partial(classical_pipeline, depth, device, protocol, bench.workers, data, settings, threads)
        mode = f"eager, {bench.workers} workers"
        group.append(bench.planned(CLASSICAL, depth, mode, protocol, threads + bench.workers, 1, build))
        groups.append(group)
    for depth, models in itertools.product(depths, packed_models):
        threads = job_threads(cores, models)
        arguments = (depth, models, device, packed_protocol, packed)
        builds = {
            PACKED: partial(k_model_pipeline, *arguments, True, data, settings, models * threads),
            SEQUENTIAL: partial(k_model_pipeline, *arguments, False, data, settings, models * threads),
            JOBS: partial(jobs_pipeline, *arguments, data, settings, threads),
        }
        unavailable = packed.unavailable_on(device, settings.runtime)
        mode = f"{packed.name}, K={models}"
        groups.append(
            [
                bench.planned(
                    pipeline, depth, mode, packed_protocol, models * threads, models, unavailable or build
                )
                for pipeline, build in builds.items()
            ]
        )
    return groups


def run_benchmark(
    depths: Sequence[int],
    modes: Sequence[str] = DEFAULT_MODES,
    min_seconds: float = 1.0,
    rounds: int = 3,
    device: str | torch.device = "auto",
    *,
    warmup_steps: int = 10,
    batch_size: int | None = None,
    num_workers: int | None = None,
    cores: int | None = None,
    packed_models: Sequence[int] = (1, 4, 8),
    packed_batch_size: int | None = None,
    packed_mode: str | None = None,
    dataset_size: int = EPOCH_IMAGES,
    seed: int = 0,
    settings: Settings | None = None,
    earlier: pd.DataFrame | None = None,
    earlier_source: str = "the earlier run",
    progress: Callable[[pd.DataFrame], None] = lambda frame: None,
) -> pd.DataFrame:
    """One row per pipeline, depth and mode (``plan``), training ``settings`` (the study config's paper
    recipe unless given) at ``batch_size`` images per step (the recipe's unless given), each row on
    ``cores`` cores (``num_workers`` + 1 unless given). Every group of rows is measured in ``rounds``
    interleaved rounds of repeats at least ``min_seconds`` long (``rounds.measure_group``). The K-model
    rows run in ``packed_mode`` (bf16 on CUDA, fp32 elsewhere, unless given) at ``packed_batch_size``
    images per model and step (``batch_size`` unless given). Modes that do not apply on the device give
    a row with an "n/a on ..." note and no figures, and a row that raises gives one whose note begins
    with "failed:", so that one broken mode does not cost the others.

    ``earlier`` (the rows of an interrupted run of the same command, read from ``earlier_source``)
    resumes that run: a group whose rows it measured all is kept, not measured again. ``progress``
    receives the rows so far after each group."""
    device = resolve_device(device)
    settings = settings or load_settings()
    workers = default_workers() if num_workers is None else num_workers
    cores = cores or workers + 1
    data = synthetic_data(dataset_size, seed)
    bench = Bench(device, describe_machine(device), data, settings, workers, cores)
    protocol = Protocol(
        batch_size=batch_size or settings.batch_size,
        min_seconds=min_seconds,
        rounds=rounds,
        warmup_steps=warmup_steps,
        seed=seed,
    )
    packed_protocol = replace(protocol, batch_size=packed_batch_size or protocol.batch_size)
    ours = [Mode.parse(name) for name in modes]
    packed = packing_mode(packed_mode, device)
    groups = plan(bench, depths, ours, protocol, packed, packed_models, packed_protocol)
    kept = resumable_rows(earlier, [row for group in groups for row in group], earlier_source)
    return measure_groups(groups, kept, protocol, device, progress)


def measure_groups(
    groups: Sequence[Sequence[Planned]],
    kept: dict[tuple, dict],
    protocol: Protocol,
    device: torch.device,
    progress: Callable[[pd.DataFrame], None],
) -> pd.DataFrame:
    """The rows of ``groups``, group by group: a group whose measured rows are all in ``kept`` (by
    identity, ``resumable_rows``) takes them from there, any other is measured (``measure``). ``progress``
    receives the rows so far after each group."""
    rows = []
    for group in groups:
        measured = [row for row in group if not isinstance(row.build, str)]
        if measured and all(row.identity in kept for row in measured):
            for row in group:
                log.info("%s: kept from the earlier run", row.label)
                rows.append(kept.get(row.identity) or row.row(row.build))
        else:
            rows += measure(group, protocol, device)
        progress(pd.DataFrame(rows, columns=COLUMNS))
    return pd.DataFrame(rows, columns=COLUMNS)


def measure(group: Sequence[Planned], protocol: Protocol, device: torch.device) -> list[dict]:
    """The group's rows: those with a pipeline measured in interleaved rounds, the others with their
    reason."""
    start_memory_count(device)
    builds = [row.build for row in group if not isinstance(row.build, str)]
    outcomes = iter(measure_group(builds, protocol, device))
    return [row.row(row.build if isinstance(row.build, str) else next(outcomes)) for row in group]


def resumable_rows(
    earlier: pd.DataFrame | None, plan: Sequence[Planned], source: str = "the earlier run"
) -> dict[tuple, dict]:
    """The rows of ``earlier`` (read from ``source``) with figures, by identity, when each is a row of
    ``plan``. Raises StudyError, before anything is measured, when some are not: resuming would drop
    figures that this run does not measure again."""
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
        if identity in planned:
            kept[identity] = record
        else:
            foreign.append(record)
    if foreign:
        first = foreign[0]
        raise StudyError(
            f"{source} holds {len(foreign)} measured row(s) that this command would not measure "
            f"(the first: ResNet-{first['depth']} {first['pipeline']} {first['mode']}, batch "
            f"{first['batch_size']} on {first['cores']} cores, {first['rounds']} rounds of at least "
            f"{first['min_seconds']} s after {first['warmup_steps']} warm-up steps, on {first['machine']}); "
            "resume with the command and machine that wrote them, or write to another folder."
        )
    return kept


def resolve_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else select_device(device)


def describe_machine(device: torch.device) -> str:
    """The device (the GPU's name), with what else sets the speed: the CPU model and its cores (the
    classical pipeline's workers run there), torch and CUDA. Each row's cores are its own column."""
    parts = [describe_device(device) if device.type == "cuda" else "cpu"]
    parts.append(f"{cpu_model()} ({os.cpu_count()} logical cores)")
    parts.append(f"torch {torch.__version__}")
    if device.type == "cuda":
        parts.append(f"CUDA {torch.version.cuda}")
    return ", ".join(parts)


def read_results(csv_path) -> pd.DataFrame:
    """The benchmark's CSV, with its empty notes as empty strings."""
    text = {"note": str, "images_per_s_by_round": str, "images_per_cpu_s_by_round": str}
    frame = pd.read_csv(csv_path, keep_default_na=False, na_values=[""], dtype=text)
    return frame.fillna({"note": ""}) if "note" in frame.columns else frame


def failures(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["note"].str.startswith("failed:")]
