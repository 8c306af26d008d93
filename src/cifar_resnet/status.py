"""A study's state from its files alone, while it runs or after: each run done, trained (its deployment
to come), training (epoch k of N and its time left), waiting or failed (with its log), and the study's
time left. It reads only what the jobs write (history.csv, train.json, eval.json, deploy.json and the job
logs) and the configuration, so it answers the same locally and under SLURM, from any shell."""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from cifar_resnet.config import Run, Study
from cifar_resnet.layout import (
    DEPLOY_LOG,
    DEPLOY_RECORD,
    EVAL_RECORD,
    HISTORY,
    RESULTS,
    TRAIN_LOG,
    TRAIN_RECORD,
    run_file,
    run_path,
)
from cifar_resnet.records import read_history, read_train_record
from cifar_resnet.tables import format_duration

# The line a job's log holds when the job failed: workflow.run_job logs its one sentence at this level.
FAILURE_MARK = " ERROR "
# The sentence a training job logs when a signal stopped it after saving its work (run.stop).
STOPPED = re.compile(
    r"Stopped by (?P<signal>\w+) .*? at epoch (?P<epoch>\d+)/(?P<epochs>\d+), step (?P<step>\d+)"
)
# What sends a job the signal, most likely first: SLURM sends SIGTERM at a job's time limit.
SIGNAL_CAUSES = {"SIGTERM": " (most likely the cluster's time limit; else preemption or scancel)"}
STATES = ("done", "trained", "training", "stopped", "failed", "waiting")


@dataclass
class RunState:
    run: Run
    state: str
    epoch: int | None = None
    epochs: int | None = None
    seconds_left: float | None = None  # the run's training time left, from its epochs so far
    updated: float | None = None  # when its history.csv was last written (epoch seconds)
    log: Path | None = None  # the failed or stopped job's log
    stopped_by: str | None = None  # the signal that stopped it (SIGTERM: a cluster's time limit, most often)
    step: int | None = None  # where in its epoch it stopped


def run_state(run: Run, deploys: bool) -> RunState:
    """One run's state from its files (paths relative to the study's working directory)."""
    logs = {"train": Path(run_path(TRAIN_LOG, run)), "deploy": Path(run_path(DEPLOY_LOG, run))}
    if Path(run_file(EVAL_RECORD, run)).exists():
        if not deploys or Path(run_file(DEPLOY_RECORD, run)).exists():
            return RunState(run, "done")
        return (
            RunState(run, "failed", log=logs["deploy"])
            if failed(logs["deploy"])
            else RunState(run, "trained")
        )
    stopped = stop_of(logs["train"])
    if stopped:
        return RunState(
            run,
            "stopped",
            epoch=int(stopped["epoch"]),
            epochs=int(stopped["epochs"]),
            log=logs["train"],
            stopped_by=stopped["signal"],
            step=int(stopped["step"]),
        )
    if failed(logs["train"]):
        return RunState(run, "failed", log=logs["train"])
    history = Path(run_file(HISTORY, run))
    if not history.exists():
        return RunState(run, "training" if logs["train"].exists() else "waiting")
    rows = read_history(history)
    if not rows:
        return RunState(run, "training")
    last, epochs = rows[-1], int(rows[-1].get("epochs") or len(rows))
    epoch_seconds = statistics.mean(row["seconds"] + (row.get("val_seconds") or 0) for row in rows)
    return RunState(
        run,
        "training",
        epoch=int(last["epoch"]),
        epochs=epochs,
        seconds_left=(epochs - int(last["epoch"])) * epoch_seconds,
        updated=history.stat().st_mtime,
    )


def failed(log: Path) -> bool:
    return log.exists() and FAILURE_MARK in log.read_text(errors="replace")


def stop_of(log: Path) -> re.Match | None:
    """Where the job whose log this is was stopped by a signal, having saved its work; None otherwise."""
    return STOPPED.search(log.read_text(errors="replace")) if log.exists() else None


def study_state(study: Study, deploys: bool) -> list[RunState]:
    """Every run the workflow trains, pretraining runs included, in the workflow's order."""
    return [run_state(run, deploys) for run in study.trained_runs()]


def training_seconds_left(states: list[RunState], study: Study) -> float | None:
    """The study's training time left, as a wall time: the running runs' time left and the waiting runs'
    estimated training time, shared among as many jobs as are training now. A waiting run is estimated
    from the finished runs' wall time per unit of compute (depth times width squared); None before any
    run has finished."""
    done = [s for s in states if s.state in ("done", "trained")]
    rates = [
        read_train_record(run_file(TRAIN_RECORD, s.run))["wall_seconds"] / study.compute(s.run) for s in done
    ]
    if not rates:
        return None
    rate = statistics.median(rates)
    running = [s for s in states if s.state == "training"]
    waiting = [
        s for s in states if s.state in ("waiting", "stopped")
    ]  # a stopped run: at most its whole time
    work = sum(s.seconds_left or 0 for s in running) + sum(rate * study.compute(s.run) for s in waiting)
    return work / max(1, len(running))


def describe(states: list[RunState], seconds_left: float | None, now: float | None = None) -> str:
    """The report ``cifar-resnet status`` prints: a line per run that is not waiting or done, then the
    counts and the time left."""
    now = time.time() if now is None else now
    lines = []
    for s in states:
        name = f"{s.run.dataset}/{s.run.variant}/ResNet-{s.run.depth}/seed {s.run.seed}"
        if s.state == "training" and s.epoch is not None:
            lines.append(
                f"training  {name}: epoch {s.epoch}/{s.epochs}, {format_duration(s.seconds_left)} left"
                f" (history written {format_duration(now - s.updated)} ago)"
            )
        elif s.state == "training":
            lines.append(f"training  {name}: starting")
        elif s.state == "stopped":
            lines.append(
                f"stopped   {name}: by {s.stopped_by}{SIGNAL_CAUSES.get(s.stopped_by, '')} at epoch "
                f"{s.epoch}/{s.epochs}, step {s.step}, its work saved; the same snakemake command resumes it "
                f"(see {s.log})"
            )
        elif s.state == "failed":
            lines.append(f"failed    {name}: see {s.log}")
        elif s.state == "trained":
            lines.append(f"trained   {name}: its deployment is to come")
    if not Path(RESULTS).is_dir():
        lines.append(
            f"nothing has run in {Path.cwd()} (it has no {RESULTS}/ folder): run this where you run snakemake"
        )
    counts = {state: sum(s.state == state for s in states) for state in STATES}
    lines.append(", ".join(f"{count} {state}" for state, count in counts.items()) + f" of {len(states)} runs")
    if counts["done"] + counts["trained"] < len(states):
        left = (
            "unknown until a run has finished"
            if seconds_left is None
            else f"about {format_duration(seconds_left)}"
        )
        lines.append(f"training time left: {left} (deployments not included)")
    return "\n".join(lines)
