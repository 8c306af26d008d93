"""A whole benchmark run: the plan of rows (pipeline x depth x mode), each measured or given the
reason it has no figures, the rows of an interrupted run kept on ``--resume``, and the CSV they are
written to."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import pandas as pd
import torch

from cifar_resnet.benchmark.data import EPOCH_IMAGES, synthetic_data
from cifar_resnet.benchmark.jobs import concurrent_jobs_throughput
from cifar_resnet.benchmark.modes import DEFAULT_MODES, Mode, packing_mode
from cifar_resnet.benchmark.packing import packed_throughput
from cifar_resnet.benchmark.pipelines import classical_throughput, default_workers, our_step_throughput
from cifar_resnet.benchmark.settings import Settings, load_settings
from cifar_resnet.benchmark.timing import Measurement, Protocol
from cifar_resnet.errors import StudyError
from cifar_resnet.provenance import cpu_model, describe_device
from cifar_resnet.runtime import select_device

log = logging.getLogger(__name__)

IDENTITY = ["pipeline", "depth", "mode", "device", "machine", "batch_size", "steps", "warmup_steps"]
COLUMNS = [*IDENTITY, "images_per_s", "seconds_per_epoch", "peak_memory_mb", "repeats", "note"]
OURS, CLASSICAL, PACKED, SEQUENTIAL, JOBS = "ours", "classical", "packed", "sequential", "jobs"


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


@dataclass(frozen=True)
class Bench:
    """What every row of one benchmark run shares."""

    device: torch.device
    machine: str  # describe_machine(device)
    data: dict  # the synthetic prepared dataset, on the CPU
    settings: Settings
    workers: int  # the classical pipeline's DataLoader workers

    def planned(self, pipeline: str, depth: int, mode: str, protocol: Protocol, models: int, job) -> Planned:
        keys = {
            "pipeline": pipeline,
            "depth": depth,
            "mode": mode,
            "device": self.device.type,
            "machine": self.machine,
            "batch_size": protocol.batch_size,
            "steps": protocol.steps,
            "warmup_steps": protocol.warmup_steps,
        }
        return Planned(keys, models, job)


def plan(
    bench: Bench,
    depths: Sequence[int],
    modes: Sequence[Mode],
    protocol: Protocol,
    packed: Mode,
    packed_models: Sequence[int],
    packed_protocol: Protocol,
) -> list[Planned]:
    """The rows, in the order they are measured: per depth, ours in each of ``modes``, the classical
    pipeline, then packed, sequential and jobs for each K in ``packed_models``."""
    device, data, settings = bench.device, bench.data, bench.settings
    rows = []
    for depth in depths:
        for mode in modes:
            job = mode.unavailable_on(device, settings.runtime) or partial(
                our_step_throughput, depth, mode, device, protocol, data, settings
            )
            rows.append(bench.planned(OURS, depth, mode.name, protocol, 1, job))
        job = partial(classical_throughput, depth, device, protocol, bench.workers, data, settings)
        rows.append(bench.planned(CLASSICAL, depth, f"eager, {bench.workers} workers", protocol, 1, job))
        for models, pipeline in itertools.product(packed_models, (PACKED, SEQUENTIAL, JOBS)):
            arguments = (depth, models, device, packed_protocol, packed)
            job = packed.unavailable_on(device, settings.runtime) or (
                partial(concurrent_jobs_throughput, *arguments, data, settings)
                if pipeline == JOBS
                else partial(packed_throughput, *arguments, pipeline == PACKED, data, settings)
            )
            mode = f"{packed.name}, K={models}"
            rows.append(bench.planned(pipeline, depth, mode, packed_protocol, models, job))
    return rows


def run_benchmark(
    depths: Sequence[int],
    modes: Sequence[str] = DEFAULT_MODES,
    steps: int = 50,
    repeats: int = 5,
    device: str | torch.device = "auto",
    *,
    warmup_steps: int = 10,
    batch_size: int | None = None,
    num_workers: int | None = None,
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
    recipe unless given) at ``batch_size`` images per step (the recipe's unless given). The K-model rows
    run in ``packed_mode`` (bf16 on CUDA, fp32 elsewhere, unless given) at ``packed_batch_size`` images
    per model and step (``batch_size`` unless given). Modes that do not apply on the device give a row
    with an "n/a on ..." note and no figures, and a measurement that raises gives one whose note begins
    with "failed:", so that one broken mode does not cost the others.

    ``earlier`` (the rows of an interrupted run of the same command, read from ``earlier_source``)
    resumes that run: its rows with figures are kept, not measured again. ``progress`` receives the
    rows so far after each one."""
    device = resolve_device(device)
    settings = settings or load_settings()
    workers = default_workers() if num_workers is None else num_workers
    bench = Bench(device, describe_machine(device), synthetic_data(dataset_size, seed), settings, workers)
    protocol = Protocol(
        batch_size=batch_size or settings.batch_size,
        steps=steps,
        repeats=repeats,
        warmup_steps=warmup_steps,
        seed=seed,
    )
    packed_protocol = replace(protocol, batch_size=packed_batch_size or protocol.batch_size)
    ours = [Mode.parse(name) for name in modes]
    packed = packing_mode(packed_mode, device)
    steps_planned = plan(bench, depths, ours, protocol, packed, packed_models, packed_protocol)
    kept = resumable_rows(earlier, steps_planned, repeats, earlier_source)
    rows = []
    for step in steps_planned:
        if step.identity in kept:
            log.info("%s: kept from the earlier run", step.label)
            rows.append(kept[step.identity])
        else:
            rows.append(step.run())
        progress(pd.DataFrame(rows, columns=COLUMNS))
    return pd.DataFrame(rows, columns=COLUMNS)


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


def resolve_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else select_device(device)


def describe_machine(device: torch.device) -> str:
    """What the trainer records as its device (``describe_device``), with what else sets the speed:
    the CPU model and its cores (the classical pipeline's workers run there), torch and CUDA."""
    parts = [describe_device(device), f"{cpu_model()} ({os.cpu_count()} logical cores)"]
    parts.append(f"torch {torch.__version__}")
    if device.type == "cuda":
        parts.append(f"CUDA {torch.version.cuda}")
    return ", ".join(parts)


def read_results(csv_path) -> pd.DataFrame:
    """The benchmark's CSV, with its empty notes as empty strings."""
    frame = pd.read_csv(csv_path, keep_default_na=False, na_values=[""], dtype={"note": str})
    return frame.fillna({"note": ""}) if "note" in frame.columns else frame


def failures(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["note"].str.startswith("failed:")]
