"""Where a study's files lie, spelled once: the workflow's rules build their paths from these names and
patterns, and the jobs, ``status``, the release and the tools find a run's files through them."""

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
# A run's jobs' logs: its training (which ends with its evaluation) and its deployment.
TRAIN_LOG = f"{LOGS}/train/{RUN_NAME}.log"
DEPLOY_LOG = f"{LOGS}/deploy/{RUN_NAME}.log"
# A run's TensorBoard event files, written as it trains (``cifar_resnet.curves``): outside the run's
# folder, so that nothing listing it meets them, and under one folder per dataset, so that
# ``tensorboard --logdir results`` (or ``results/{dataset}/tensorboard``) shows every run of the study.
TENSORBOARD_DIR = f"{RESULTS}/{{dataset}}/tensorboard/{RUN_NAME}"

# A run's files in its folder. The training job writes the selected model, its history and train.json,
# then eval.json; the deployment job the ONNX model, the INT8 one where it is built, and deploy.json.
MODEL = "model.pt"
HISTORY = "history.csv"
TRAIN_RECORD = "train.json"
EVAL_RECORD = "eval.json"
DEPLOY_RECORD = "deploy.json"
ONNX_MODEL = "model.onnx"
INT8_MODEL = "model.int8.onnx"
TRAINED = (MODEL, HISTORY, TRAIN_RECORD)
# What a run's folder holds once its training job has finished: what loading or releasing it reads.
FINISHED = (MODEL, TRAIN_RECORD, EVAL_RECORD)
DEPLOYED_MODELS = {"onnx": ONNX_MODEL, "int8": INT8_MODEL}
DEPLOYMENT = (*DEPLOYED_MODELS.values(), DEPLOY_RECORD)
# One dataset's figures (``{RESULTS}/{dataset}/plots/{name}.png``), in the report's and README's order.
RESULT_PLOTS = ("error_vs_depth", "learning_curves", "error_vs_params", "confusion_matrix")
DEPLOYMENT_PLOTS = ("error_vs_latency",)


def run_path(pattern: str, run: Run) -> str:
    """``pattern`` (RUN_DIR or RESUME_FILE and what follows) for one run."""
    return pattern.format(**asdict(run))


def run_file(name: str, run: Run) -> str:
    """The path of the file ``name`` (MODEL, HISTORY ...) in the folder of ``run``."""
    return run_path(f"{RUN_DIR}/{name}", run)


def plot_names(deployed: bool) -> tuple[str, ...]:
    """The names of one dataset's figures; the deployment's last when the runs are ``deployed``."""
    return (RESULT_PLOTS + DEPLOYMENT_PLOTS) if deployed else RESULT_PLOTS


def run_dirs(dataset_results: Path) -> list[Path]:
    """The run directories under one dataset's results folder (``results/{dataset}``), sorted."""
    return sorted(Path(dataset_results).glob(f"{RUNS}/{re.sub(r'{[a-z]+}', '*', RUN_NAME)}"))


def seed_dirs(run_dir: Path) -> list[Path]:
    """The folders of every seed of the run in ``run_dir``'s dataset, variant and depth, itself included,
    sorted."""
    seed_folder = RUN_NAME.rsplit("/", 1)[1]
    return sorted(Path(run_dir).parent.glob(re.sub(r"{[a-z]+}", "*", seed_folder)))
