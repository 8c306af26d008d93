"""Where a study's files lie, spelled once: the workflow's rules build their paths from these patterns,
and the tools that read finished runs find them with ``run_dirs``."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from cifar_resnet.config import Run

RESULTS = "results"
RUN_NAME = "{variant}/resnet{depth}/seed{seed}"
RUNS = "runs"
RUN_DIR = f"{RESULTS}/{{dataset}}/{RUNS}/{RUN_NAME}"
# Outside the run directory: Snakemake deletes a failed job's outputs, and the resume state must survive.
RESUME_FILE = f"{RESULTS}/{{dataset}}/resume/{RUN_NAME}.pt"
LOGS = f"{RESULTS}/{{dataset}}/logs"
# One dataset's figures (``{RESULTS}/{dataset}/plots/{name}.png``), in the report's and README's order.
RESULT_PLOTS = ("error_vs_depth", "learning_curves", "error_vs_params", "confusion_matrix")
DEPLOYMENT_PLOTS = ("error_vs_latency",)


def run_path(pattern: str, run: Run) -> str:
    """``pattern`` (RUN_DIR or RESUME_FILE and what follows) for one run."""
    return pattern.format(**asdict(run))


def plot_names(deployed: bool) -> tuple[str, ...]:
    """The names of one dataset's figures; the deployment's last when the runs are ``deployed``."""
    return (RESULT_PLOTS + DEPLOYMENT_PLOTS) if deployed else RESULT_PLOTS


def run_dirs(dataset_results: Path) -> list[Path]:
    """The run directories under one dataset's results folder (``results/{dataset}``), sorted."""
    return sorted(Path(dataset_results).glob(f"{RUNS}/{re.sub(r'{[a-z]+}', '*', RUN_NAME)}"))
