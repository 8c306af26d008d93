"""Where a job's time went: for training, start-up, setup, the first step, training, validation and
checkpoints; for the evaluation that ends a training job, setup and inference; for deployment,
start-up, setup and its work; and the fraction spent outside the work (steady training steps,
inference, or export and timing). ``started_at`` (Unix time of the start) lets a workflow's jobs be
laid on one clock."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ProcessTimes:
    """Where this process's time went, in seconds. A resumed run's earlier processes are not included."""

    startup: float | None  # the job's process start to train_run: interpreter, preamble, imports
    setup: float = 0.0  # device, data onto the device, model, optimizer
    training: float = 0.0  # the epochs' step loops, this process's first step included
    validation: float = 0.0
    checkpoints: float = 0.0  # the resume state, at most every checkpoint interval
    started_at: float = field(init=False)

    def __post_init__(self):
        self.started_at = time.time() - (self.startup or 0.0)

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
            "started_at": self.started_at,
        }


# The work of each part of a workflow other than training, as its timings name it.
WORK_OF_JOB = {"evaluation": "inference_seconds", "deployment": "deploy_seconds"}


def work_timings(job_type: str, startup: float | None, setup: float, work: float, wall: float) -> dict:
    """The parts of a job of ``job_type`` (a key of WORK_OF_JOB; ``wall`` counts from the job's own code,
    after start-up), its time from process start and the fraction of it spent outside its work."""
    job = wall + (startup or 0.0)
    return {
        "startup_seconds": startup,
        "setup_seconds": setup,
        WORK_OF_JOB[job_type]: work,
        "job_seconds": job,
        "overhead_fraction": 1 - work / job,
        "started_at": time.time() - job,
    }


def describe_timings(timings: dict) -> str:
    parts = ("startup", "setup", "first_step", "validation", "checkpoint")
    seconds = {part: timings[f"{part}_seconds"] for part in parts}
    listed = ", ".join(f"{part} {'?' if s is None else f'{s:.2f}'} s" for part, s in seconds.items())
    return (
        f"job {timings['job_seconds']:.1f} s, overhead {100 * timings['overhead_fraction']:.1f}% "
        f"outside steady training steps: {listed.replace('_', ' ')}"
    )


def process_age() -> float | None:
    """Seconds since this process started, from Linux's /proc (clock ticks, so 10 ms steps); None where
    that is unavailable."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_after_boot = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started_after_boot)
