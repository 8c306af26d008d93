"""The per-run summary: one row per run, read from its train.json and eval.json."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cifar_resnet.errors import StudyError
from cifar_resnet.files import check_json

RUN_KEY = ["dataset", "variant", "depth", "seed"]
_TEST_RESULTS = ("test_accuracy", "test_error", "test_loss", "params", "macs")
_TRAINING = ("train_seconds", "epochs", "iterations", "selected_epoch", "selected_val_accuracy", "device")
TRAIN_FIELDS = (*RUN_KEY, *_TRAINING)
EVAL_FIELDS = (*_TEST_RESULTS, "inference_images_per_s")
# The run, its test results, its training, and the inference speed last.
SUMMARY_COLUMNS = (*RUN_KEY, *_TEST_RESULTS, *_TRAINING, "inference_images_per_s")


def summarize_runs(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """One row per run directory (its train.json and eval.json), sorted by dataset, depth, variant, seed."""
    if not run_dirs:
        raise StudyError("There are no runs to summarize; check that the config lists variants and seeds.")
    rows = []
    for run_dir in map(Path, run_dirs):
        row = read_fields(run_dir / "train.json", TRAIN_FIELDS) | read_fields(
            run_dir / "eval.json", EVAL_FIELDS
        )
        rows.append(row)
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    duplicated = summary[summary.duplicated(RUN_KEY, keep=False)]
    if not duplicated.empty:
        first = duplicated.iloc[0]
        raise StudyError(
            f"Several run directories hold the run {first.dataset}/{first.variant}/ResNet-{first.depth}"
            f"/seed {first.seed}; each run must be summarized once."
        )
    return summary.sort_values(["dataset", "depth", "variant", "seed"], ignore_index=True)


def read_fields(path: Path, fields: Sequence[str]) -> dict:
    """``fields`` of a run's JSON file, or one sentence on what is wrong with it."""
    try:
        record = check_json(path, fields)
    except FileNotFoundError:
        raise StudyError(f"{path} is missing; run that run's training and evaluation first.") from None
    return {field: record[field] for field in fields}


def single_dataset(summary: pd.DataFrame) -> str:
    """The one dataset whose runs ``summary`` holds; tables and plots are drawn per dataset."""
    datasets = sorted(set(summary["dataset"]))
    if len(datasets) != 1:
        found = ", ".join(datasets) if datasets else "none"
        raise StudyError(f"Expected the runs of exactly one dataset, found: {found}.")
    return datasets[0]
