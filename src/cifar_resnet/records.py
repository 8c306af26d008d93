"""The formats of a run's records, each with its fields, its writer and its reader: history.csv (one row
per epoch), train.json (the run, its configuration and provenance, its model and training), eval.json (its
single test) and deploy.json (its deployment). Standard library only, so that Snakemake's own process can
check the records earlier runs left before any job starts (``cifar_resnet.preflight``) and ``status`` can
read them without the jobs' libraries."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

from cifar_resnet.errors import StudyError
from cifar_resnet.files import atomic_output, check_json, unreadable, write_json

RUN_KEY = ("dataset", "variant", "depth", "seed")
TEST_RESULTS = ("test_accuracy", "test_error", "test_loss", "params", "macs")
TRAINING = ("train_seconds", "epochs", "iterations", "selected_epoch", "selected_val_accuracy", "device")
# Where a run's model comes from, as a loaded or released model carries it.
PROVENANCE = (*RUN_KEY, "config_hash", "git_commit", "versions")
# train.json: the provenance, the run's configuration, its model (a ModelSpec's fields), what the model's
# input and output mean (the training split's normalisation, the class names), how it trained, and where
# its job's time went (``timings``, as eval.json and deploy.json hold their jobs').
TRAIN_RECORD_FIELDS = (
    *PROVENANCE,
    "config",
    "model",
    "normalization",
    "class_names",
    *TRAINING,
    "wall_seconds",
    "images_per_s",
    "timings",
)
# deploy.json: the exported model's sizes, its agreement with PyTorch, the INT8 model's test error,
# batch-1 latencies on one thread (median and p90), one batch's latency on several threads, and how they
# were measured.
DEPLOY_FIELDS = (
    "onnx_bytes",
    "int8_bytes",
    "onnx_top1_agreement",
    "onnx_max_logit_difference",
    "int8_test_error",
    "int8_error_difference",
    "onnx_b1_ms",
    "onnx_b1_p90_ms",
    "int8_b1_ms",
    "int8_b1_p90_ms",
    "eager_b1_ms",
    "eager_b1_p90_ms",
    "onnx_batch_ms",
    "int8_batch_ms",
    "eager_batch_ms",
    "latency_batch_size",
    "latency_threads",
    "cpu",
)
# eval.json: the test results, the inference speed, the test set's confusion matrix and the timings.
CONFUSION_FIELDS = ("confusion_matrix", "class_names")
EVAL_RECORD_FIELDS = (*TEST_RESULTS, "inference_images_per_s", *CONFUSION_FIELDS, "timings")
DEPLOY_RECORD_FIELDS = (*DEPLOY_FIELDS, "timings")
# What the figures read from a run's history.csv.
LEARNING_CURVE_COLUMNS = ("epoch", "train_accuracy", "val_accuracy")

# One row per epoch; "epochs" is the planned number, so that a running job's history says how far along it is.
HISTORY_COLUMNS = (
    "epoch",
    "iteration",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "seconds",
    "images_per_s",
    "val_seconds",
    "epochs",
)
# What a reader needs in each row of a running training's history (how far along it is and how long an
# epoch takes), and of a finished one's (the learning curves, too).
PROGRESS_COLUMNS = ("epoch", "seconds")
TRAINED_COLUMNS = (*PROGRESS_COLUMNS, *LEARNING_CURVE_COLUMNS[1:])


def write_history(path: str | os.PathLike, rows: list[dict]) -> None:
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_history(
    path: str | os.PathLike, required: Sequence[str] = PROGRESS_COLUMNS
) -> list[dict[str, float | None]]:
    """history.csv's complete rows, every value a number (None where it is empty, but never in the
    ``required`` columns). A last line cut short (a copy or a file system sync
    under way) is left out, not read as the last epoch; anything else that is not such a table is one
    sentence naming the file."""
    try:
        with open(path, newline="") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise unreadable(path, "is not a text file, so not a history this workflow writes") from None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    try:
        rows = list(csv.reader(io.StringIO("".join(lines), newline="")))
    except csv.Error as error:
        raise unreadable(path, f"is not a CSV table ({error})") from None
    header = rows[0] if rows else []
    missing = [column for column in required if column not in header]
    if missing:
        raise unreadable(path, f"lacks the columns {', '.join(missing)}")
    return [_history_row(path, header, row, line, required) for line, row in enumerate(rows[1:], start=2)]


def read_trained_history(path: str | os.PathLike) -> list[dict[str, float | None]]:
    """The history of a run whose training has finished: at least one epoch, each with its learning
    curves' values."""
    history = read_history(path, TRAINED_COLUMNS)
    if not history:
        raise unreadable(path, "has no rows")
    return history


def _history_row(
    path, header: list[str], row: list[str], line: int, required: Sequence[str]
) -> dict[str, float | None]:
    try:
        if len(row) != len(header):
            raise ValueError(f"{len(row)} fields, not {len(header)}")
        values = {column: float(value) if value else None for column, value in zip(header, row, strict=True)}
        empty = [column for column in required if values[column] is None]
        if empty:
            raise ValueError(f"no {', '.join(empty)}")
    except ValueError as error:
        raise unreadable(path, f"has a broken line {line} ({error})") from None
    return values


def write_record(path: str | os.PathLike, record: dict, fields: Sequence[str]) -> None:
    """A run's JSON record (train.json with TRAIN_RECORD_FIELDS, eval.json with EVAL_RECORD_FIELDS,
    deploy.json with DEPLOY_RECORD_FIELDS), refused before anything is written when it lacks what its readers
    read."""
    missing = [field for field in fields if field not in record]
    if missing:
        raise ValueError(f"{path} would lack {', '.join(missing)}")
    write_json(path, record)


def read_train_record(path: str | os.PathLike) -> dict:
    return _read_record(path, TRAIN_RECORD_FIELDS, "training")


def read_eval_record(path: str | os.PathLike) -> dict:
    return _read_record(path, EVAL_RECORD_FIELDS, "training (which ends with its evaluation)")


def read_deploy_record(path: str | os.PathLike) -> dict:
    return _read_record(path, DEPLOY_RECORD_FIELDS, "deployment")


def _read_record(path: str | os.PathLike, fields: Sequence[str], written_by: str) -> dict:
    """The record at ``path`` once it holds ``fields``; one sentence naming the file otherwise, and for a
    missing one the run's job that writes it, ``written_by``."""
    try:
        return check_json(path, fields)
    except FileNotFoundError:
        raise StudyError(f"{path} is missing; run that run's {written_by} first.") from None
