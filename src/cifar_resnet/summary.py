"""The per-run summary: one row per run, read from its train.json and eval.json, and from its
deploy.json when the runs are deployed."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cifar_resnet.errors import StudyError
from cifar_resnet.files import check_csv, check_json, unreadable
from cifar_resnet.records import (
    DEPLOY_FIELDS,
    EVAL_FIELDS,
    RUN_KEY,
    TEST_RESULTS,
    TRAIN_FIELDS,
    TRAINING,
)

# The run, its test results, its training, and the inference speed last; deployed summaries add DEPLOY_FIELDS.
SUMMARY_COLUMNS = (*RUN_KEY, *TEST_RESULTS, *TRAINING, "inference_images_per_s")
TEXT_COLUMNS = ("dataset", "variant", "device")


def summarize_runs(run_dirs: Sequence[Path], deployed: bool = False) -> pd.DataFrame:
    """One row per run directory (its train.json and eval.json, and with ``deployed`` its deploy.json, whose
    DEPLOY_FIELDS end the columns), sorted by dataset, depth, variant, seed."""
    if not run_dirs:
        raise StudyError("There are no runs to summarize; check that the config lists variants and seeds.")
    rows = []
    for run_dir in map(Path, run_dirs):
        row = read_fields(run_dir / "train.json", TRAIN_FIELDS) | read_fields(
            run_dir / "eval.json", EVAL_FIELDS
        )
        if deployed:
            row |= read_fields(run_dir / "deploy.json", DEPLOY_FIELDS, written_by="deployment")
        rows.append(row)
    columns = [*SUMMARY_COLUMNS, *DEPLOY_FIELDS] if deployed else list(SUMMARY_COLUMNS)
    summary = pd.DataFrame(rows, columns=columns)
    duplicated = summary[summary.duplicated(list(RUN_KEY), keep=False)]
    if not duplicated.empty:
        first = duplicated.iloc[0]
        raise StudyError(
            f"Several run directories hold the run {first.dataset}/{first.variant}/ResNet-{first.depth}"
            f"/seed {first.seed}; each run must be summarized once."
        )
    return summary.sort_values(["dataset", "depth", "variant", "seed"], ignore_index=True)


def read_summary(path: str | Path) -> pd.DataFrame:
    """The summary ``summarize_runs`` wrote, once it is checked to be whole (every column, no row cut
    short, a number in each numeric column of the runs' results; a deployment's INT8 columns may be
    empty); one sentence naming the file otherwise."""
    text = check_csv(path, [column for column in SUMMARY_COLUMNS if column not in TEXT_COLUMNS])
    summary = pd.read_csv(io.StringIO(text))
    missing = [column for column in DEPLOY_FIELDS if column not in summary.columns]
    if missing and len(missing) < len(DEPLOY_FIELDS):
        raise unreadable(path, f"lacks the columns {', '.join(missing)}")
    return summary


def read_fields(path: Path, fields: Sequence[str], written_by: str = "training and evaluation") -> dict:
    """``fields`` of a run's JSON file, or one sentence on what is wrong with it; a missing file names the
    run's jobs that write it, ``written_by``."""
    try:
        record = check_json(path, fields)
    except FileNotFoundError:
        raise StudyError(f"{path} is missing; run that run's {written_by} first.") from None
    return {field: record[field] for field in fields}


def has_deployment(summary: pd.DataFrame) -> bool:
    """Whether ``summary`` holds its runs' deployment (``summarize_runs`` with ``deployed``)."""
    return set(DEPLOY_FIELDS) <= set(summary.columns)


def single_dataset(summary: pd.DataFrame) -> str:
    """The one dataset whose runs ``summary`` holds; tables and plots are drawn per dataset."""
    datasets = sorted(set(summary["dataset"]))
    if len(datasets) != 1:
        found = ", ".join(datasets) if datasets else "none"
        raise StudyError(f"Expected the runs of exactly one dataset, found: {found}.")
    return datasets[0]
