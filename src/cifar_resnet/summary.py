"""The per-run summary, summary.csv (its columns, its writer and its reader): one row per run, read from
its train.json and eval.json, and from its deploy.json when the runs are deployed."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cifar_resnet.errors import StudyError
from cifar_resnet.files import check_csv, unreadable, write_csv
from cifar_resnet.layout import DEPLOY_RECORD, EVAL_RECORD, TRAIN_RECORD
from cifar_resnet.records import (
    DEPLOY_FIELDS,
    RUN_KEY,
    TEST_RESULTS,
    TRAINING,
    read_deploy_record,
    read_eval_record,
    read_train_record,
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
        # Each column from the record that owns it: train.json and eval.json both name a device.
        trained, tested = read_train_record(run_dir / TRAIN_RECORD), read_eval_record(run_dir / EVAL_RECORD)
        row = {field: trained[field] for field in (*RUN_KEY, *TRAINING)}
        row |= {field: tested[field] for field in (*TEST_RESULTS, "inference_images_per_s")}
        if deployed:
            row |= {field: read_deploy_record(run_dir / DEPLOY_RECORD)[field] for field in DEPLOY_FIELDS}
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


def write_summary(path: str | Path, summary: pd.DataFrame) -> None:
    """summary.csv: ``summarize_runs``' rows, as ``read_summary`` reads them back."""
    write_csv(path, summary)


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
