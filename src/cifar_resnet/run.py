"""One run's training job, from a fresh start or its resume state to its outputs: the epochs, the resume
state saved at most once per checkpoint interval, model selection and early stopping, then the selected
model, ``history.csv`` and ``train.json``; and after that, the single use of the test set on the
selected model, ``eval.json``."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from cifar_resnet import checkpoint, datasets
from cifar_resnet.config import config_hash
from cifar_resnet.curves import Curves
from cifar_resnet.errors import StudyError
from cifar_resnet.evaluate import evaluate_run
from cifar_resnet.provenance import describe_device, git_commit, versions
from cifar_resnet.records import TRAIN_RECORD_FIELDS, write_history, write_record
from cifar_resnet.runtime import Runtime, compile_counts
from cifar_resnet.selection import Monitor, monitors_of, watch
from cifar_resnet.tensors import save_tensors
from cifar_resnet.timings import ProcessTimes, describe_timings, process_age
from cifar_resnet.train import PartialEpoch, Trainer, build_trainer, train_epoch
from cifar_resnet.workflow import Stopped, stop_request

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL_SECONDS = 60.0
# history.csv is rewritten after an epoch once this many seconds have passed since the last write, so
# that a running study shows its progress; on a fast GPU's half-second epochs, writing (and syncing) it
# after every epoch would cost more than the progress is worth.
PROGRESS_INTERVAL_SECONDS = 10.0


@dataclass
class Outputs:
    model: Path
    history: Path
    summary: Path
    evaluation: Path


@dataclass
class Progress:
    """The training loop's own state, which the resume state saves as one entry beside the model's,
    optimizer's, schedule's and monitors' (``plain``) and a resumed job restores as one (``of_plain``)."""

    config_hash: str  # the run's configuration: a resume state of another is not used
    epoch: int = 0  # the epochs done
    history: list[dict] = field(default_factory=list)  # their rows
    train_seconds: float = 0.0  # their step loops' time, over all processes
    selected: dict | None = None  # the selection's pick: its "epoch" and its "model" weights on the CPU
    stopped_early: bool = False
    partial: PartialEpoch | None = None  # an epoch stopped at a step boundary

    def plain(self) -> dict:
        """Plain data (the resume state is loaded weights_only, which reads no classes of ours)."""
        return {**vars(self), "partial": vars(self.partial) if self.partial else None}

    @classmethod
    def of_plain(cls, state: dict) -> Progress:
        """The progress ``plain`` gave; refused (StudyError) where its fields are not this class's."""
        names = [each.name for each in fields(cls)]
        if sorted(state) != sorted(names):
            raise StudyError(f"its progress holds {sorted(state)}, not {sorted(names)}")
        partial = state["partial"]
        return cls(**{**state, "partial": PartialEpoch(**partial) if partial else None})


def train_job(run_config: dict, prepared: Path, outputs: Outputs, resume_file: Path, **options) -> dict:
    """Train the run (``train_run`` with its ``options``; returns its summary), then evaluate its
    selected model on the test split, which the training never reads, both with the one runtime the job
    starts. The resume state goes only after the evaluation: a job stopped during it resumes where its
    training was last saved instead of training again."""
    runtime = Runtime.start(run_config["runtime"])
    summary = train_run(run_config, prepared, outputs, resume_file, runtime, **options)
    evaluate_run(outputs.summary, outputs.model, prepared, outputs.evaluation, runtime)
    resume_file.unlink(missing_ok=True)
    return summary


def train_run(
    run_config: dict,
    prepared: Path,
    outputs: Outputs,
    resume_file: Path,
    runtime: Runtime,
    pretrained: Path | None = None,
    checkpoint_interval: float = CHECKPOINT_INTERVAL_SECONDS,
    curves: Path | None = None,
) -> dict:
    """Train one run to ``outputs`` (all but the evaluation), resuming from ``resume_file`` where an
    earlier process left it, which stays until the job removes it.
    The resume state is saved after an epoch once ``checkpoint_interval`` seconds have passed since the
    last save, so a kill loses at most that much training, and short epochs on a fast GPU do not wait
    for a checkpoint each. Each epoch's curves go to TensorBoard event files in the folder ``curves``
    where one is named (``cifar_resnet.curves``)."""
    started = time.perf_counter()
    times = ProcessTimes(startup=process_age())
    training = run_config["recipe"]["training"]
    data = datasets.load_prepared(prepared, splits=("train", "val"))
    trainer = build_trainer(run_config, data, pretrained, runtime)
    times.setup = time.perf_counter() - started
    monitors = monitors_of(training)
    progress = resume(trainer, monitors, resume_file, config_hash(run_config))
    log_start(run_config, trainer)
    resumed = progress.epoch > 0 or progress.partial is not None
    with Curves.open(curves, run_config, progress.epoch, resumed) as writer:
        last_checkpoint = last_progress = time.perf_counter()
        trainer.stop_requested = stop_request
        while progress.epoch < trainer.total_epochs and not progress.stopped_early:
            partial = progress.partial
            row = train_epoch(trainer, progress.epoch + 1, partial)
            if isinstance(row, PartialEpoch):
                stop(row, trainer, monitors, progress, resume_file, outputs.history)
            progress.partial = None
            after_epoch(trainer, monitors, progress, row, training)
            writer.epoch(row, progress.history[(progress.selected or row)["epoch"] - 1])
            times.training += row["seconds"] - (partial.seconds if partial else 0.0)  # this process's share
            times.validation += row["val_seconds"]
            finished = progress.epoch == trainer.total_epochs or progress.stopped_early
            if not finished and (
                progress.epoch == 1 or time.perf_counter() - last_progress >= PROGRESS_INTERVAL_SECONDS
            ):
                write_history(outputs.history, progress.history)
                last_progress = time.perf_counter()
            if finished or time.perf_counter() - last_checkpoint < checkpoint_interval:
                continue
            checkpoint_started = time.perf_counter()
            save(resume_file, progress, trainer, monitors)
            last_checkpoint = time.perf_counter()
            times.checkpoints += last_checkpoint - checkpoint_started
        return write_outputs(outputs, run_config, trainer, progress, started, times)


def log_start(run_config: dict, trainer: Trainer) -> None:
    log.info(
        "training %s ResNet-%d (%s), seed %d: %d iterations = %d epochs of %d steps, batch %d, on %s",
        run_config["variant"],
        run_config["depth"],
        run_config["dataset"],
        trainer.seed,
        trainer.total_iterations,
        trainer.total_epochs,
        trainer.steps_per_epoch,
        trainer.batch_size,
        trainer.runtime.device,
    )


def save(resume_file: Path, progress: Progress, trainer: Trainer, monitors: dict[str, Monitor]) -> None:
    checkpoint.save_resume_state(
        resume_file, progress.plain(), trainer.model, trainer.optimizer, trainer.schedule, monitors
    )


def stop(
    partial: PartialEpoch,
    trainer: Trainer,
    monitors: dict[str, Monitor],
    progress: Progress,
    resume_file: Path,
    history: Path,
) -> None:
    """Save the resume state with the epoch stopped at ``partial`` (and the history so far), then end the
    job with the one sentence that says where it stopped."""
    progress.partial = partial
    save(resume_file, progress, trainer, monitors)
    if progress.history:
        write_history(history, progress.history)
    iteration = (partial.epoch - 1) * trainer.steps_per_epoch + partial.steps
    raise Stopped(
        f"Stopped by {stop_request.name} (a cluster's time limit, preemption or scancel) at epoch "
        f"{partial.epoch}/{trainer.total_epochs}, step {partial.steps} (iteration {iteration}); its state is "
        f"saved in {resume_file}, and the same snakemake command (or the profile's retry) resumes it there."
    )


def resume(trainer: Trainer, monitors: dict[str, Monitor], resume_file: Path, run_hash: str) -> Progress:
    """The run's progress: restored from ``resume_file`` (with the trainer's and monitors' state) when
    an earlier process of this configuration left one, else a fresh start."""
    resumed = checkpoint.read_resume_state(resume_file, run_hash)
    if not resumed:
        return Progress(run_hash)
    try:  # the progress first: nothing has changed when either is refused
        progress = Progress.of_plain(resumed["progress"])
        checkpoint.restore(resumed, trainer.model, trainer.optimizer, trainer.schedule, monitors)
    except StudyError as error:  # the state of an earlier version of this code
        log.warning("resume file %s does not fit (%s): starting from scratch", resume_file, error)
        resume_file.unlink()
        return Progress(run_hash)
    if progress.partial:
        log.info(
            "resumed from %s at epoch %d, step %d",
            resume_file,
            progress.partial.epoch,
            progress.partial.steps,
        )
    else:
        log.info("resumed from %s after epoch %d", resume_file, progress.epoch)
    return progress


def after_epoch(
    trainer: Trainer, monitors: dict[str, Monitor], progress: Progress, row: dict, training: dict
) -> None:
    """Log the epoch, step the schedule, keep the model selection picks and decide early stopping."""
    log.info(
        "epoch %d/%d iter %d lr %.4g train loss %.4f acc %.2f%% val loss %.4f acc %.2f%% %.1f s %.0f img/s",
        row["epoch"],
        trainer.total_epochs,
        row["iteration"],
        row["lr"],
        row["train_loss"],
        100 * row["train_accuracy"],
        row["val_loss"],
        100 * row["val_accuracy"],
        row["seconds"],
        row["images_per_s"],
    )
    trainer.schedule.end_of_epoch(row["val_accuracy"])
    selected, progress.stopped_early = watch(monitors, row, training)
    if selected:
        progress.selected = {"epoch": row["epoch"], "model": checkpoint.cpu_state(trainer.model)}
    if progress.stopped_early:
        stopping = monitors["early_stopping"]
        log.info(
            "early stopping after epoch %d: %s has not improved for %d epochs",
            row["epoch"],
            stopping.metric,
            stopping.epochs_without_improvement,
        )
    progress.history.append(row)
    progress.epoch = row["epoch"]
    progress.train_seconds += row["seconds"]


def write_outputs(
    outputs: Outputs,
    run_config: dict,
    trainer: Trainer,
    progress: Progress,
    started: float,
    times: ProcessTimes,
) -> dict:
    """The selected model (the last epoch's where the selection picked none), the history and
    ``train.json`` (the run's summary, returned)."""
    selected = progress.selected or {"epoch": progress.epoch, "model": checkpoint.cpu_state(trainer.model)}
    save_tensors(outputs.model, selected["model"])
    write_history(outputs.history, progress.history)
    wall_seconds = time.perf_counter() - started
    summary = {
        **summarize(run_config, trainer, progress, selected["epoch"]),
        "wall_seconds": wall_seconds,
        "timings": times.summary(wall_seconds, trainer.first_step_seconds),
    }
    write_record(outputs.summary, summary, TRAIN_RECORD_FIELDS)
    log_done(summary)
    return summary


def summarize(run_config: dict, trainer: Trainer, progress: Progress, selected_epoch: int) -> dict:
    """``train.json`` but for its times: the run, its selected epoch, what the model's input and output
    mean (the training split's normalisation and the class names) and where it ran."""
    selected_row = progress.history[selected_epoch - 1]
    return {
        "dataset": run_config["dataset"],
        "variant": run_config["variant"],
        "depth": run_config["depth"],
        "seed": trainer.seed,
        "config": run_config,
        "config_hash": progress.config_hash,
        "model": vars(trainer.spec),
        "normalization": {"mean": trainer.mean.tolist(), "std": trainer.std.tolist()},
        "class_names": trainer.class_names,
        "train_seconds": progress.train_seconds,
        "epochs": progress.epoch,
        "iterations": progress.history[-1]["iteration"],
        "selected_epoch": selected_epoch,
        "selected_val_accuracy": selected_row["val_accuracy"],
        "selected_val_loss": selected_row["val_loss"],
        "stopped_early": progress.stopped_early,
        "images_per_s": statistics.median([row["images_per_s"] for row in progress.history]),
        "device": describe_device(trainer.runtime.device),
        "execution": {
            **trainer.runtime.execution(trainer.optimizer),
            **compile_counts(),
        },
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "git_commit": git_commit(),
    }


def log_done(summary: dict) -> None:
    log.info(
        "done: selected epoch %d (val acc %.2f%%), %.1f s training, %.1f s wall",
        summary["selected_epoch"],
        100 * summary["selected_val_accuracy"],
        summary["train_seconds"],
        summary["wall_seconds"],
    )
    log.info("%s", describe_timings(summary["timings"]))
    if "compile" in summary["execution"]["applied"]:
        log.info(
            "torch.compile: %d graph(s) compiled, %d run without CUDA graphs",
            summary["execution"]["compiled_graphs"],
            summary["execution"]["cuda_graph_skips"],
        )
