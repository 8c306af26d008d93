"""What the workflow checks in its main process before any job starts: the files that earlier runs
left and jobs will read, and the README markers the readme rule splices between. A corrupt file or a
missing marker stops the workflow there with one sentence, instead of in a job that Snakemake would
first have cleared of its previous outputs."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path

from cifar_resnet.files import check_csv, check_json, check_tensor_file
from cifar_resnet.plots import CONFUSION_FIELDS, LEARNING_CURVE_COLUMNS
from cifar_resnet.readme import check_markers
from cifar_resnet.summary import DEPLOY_FIELDS, EVAL_FIELDS, TRAIN_FIELDS

# What the jobs that read a run's files need of each.
RUN_FILE_CHECKS = {
    "model.pt": check_tensor_file,
    "history.csv": partial(check_csv, numeric_columns=LEARNING_CURVE_COLUMNS),
    "train.json": partial(check_json, fields=(*TRAIN_FIELDS, "config")),
    "eval.json": partial(check_json, fields=(*EVAL_FIELDS, *CONFUSION_FIELDS)),
    "deploy.json": partial(check_json, fields=DEPLOY_FIELDS),
}


def check_before_jobs(run_files: Iterable[str], readme: Path | None) -> None:
    """Check those of ``run_files`` that exist, and ``readme``'s markers when it is given; raises
    StudyError naming the first problem."""
    for path in map(Path, run_files):
        if path.name in RUN_FILE_CHECKS and path.exists():
            RUN_FILE_CHECKS[path.name](path)
    if readme is not None:
        check_markers(readme)
