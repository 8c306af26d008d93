"""The formats of a run's records: history.csv (its columns, its writer and its reader), and the fields
train.json, eval.json and deploy.json must hold for their readers. Standard library only, so that
Snakemake's own process can check the records earlier runs left before any job starts
(``cifar_resnet.preflight``) and ``status`` can read them without the jobs' libraries."""

from __future__ import annotations

import csv
import io
import os

from cifar_resnet.files import atomic_output, unreadable

RUN_KEY = ("dataset", "variant", "depth", "seed")
TEST_RESULTS = ("test_accuracy", "test_error", "test_loss", "params", "macs")
TRAINING = ("train_seconds", "epochs", "iterations", "selected_epoch", "selected_val_accuracy", "device")
# What the summary reads from train.json and eval.json.
TRAIN_FIELDS = (*RUN_KEY, *TRAINING)
EVAL_FIELDS = (*TEST_RESULTS, "inference_images_per_s")
# The exported model's sizes, its agreement with PyTorch, the INT8 model's test error, batch-1 latencies
# on one thread (median and p90), one batch's latency on several threads, and how they were measured.
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
# What the figures read from a run's history.csv and eval.json.
LEARNING_CURVE_COLUMNS = ("epoch", "train_accuracy", "val_accuracy")
CONFUSION_FIELDS = ("confusion_matrix", "class_names")

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


def write_history(path: str | os.PathLike, rows: list[dict]) -> None:
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_history(path: str | os.PathLike) -> list[dict[str, float | None]]:
    """history.csv's complete rows, every value a number (None where it is empty). A last line cut short
    (a copy or a file system sync under way) is left out, not read as the last epoch; anything else that
    is not such a table is one sentence naming the file."""
    try:
        with open(path, newline="") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise unreadable(path, "is not a text file, so not a history this workflow writes") from None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    rows = list(csv.reader(io.StringIO("".join(lines), newline="")))
    header = rows[0] if rows else []
    missing = [column for column in ("epoch", "seconds") if column not in header]
    if missing:
        raise unreadable(path, f"lacks the columns {', '.join(missing)}")
    history = []
    for line, row in enumerate(rows[1:], start=2):
        try:
            if len(row) != len(header):
                raise ValueError(f"{len(row)} fields, not {len(header)}")
            history.append(
                {column: float(value) if value else None for column, value in zip(header, row, strict=True)}
            )
        except ValueError as error:
            raise unreadable(path, f"has a broken line {line} ({error})") from None
    return history
