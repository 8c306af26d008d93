"""What the workflow checks in its main process before any job starts: the files that earlier runs
left and jobs will read, the README markers the readme rule splices between, and, when the jobs run on
this machine, the device the configuration asks for. A corrupt file, a missing marker or an absent GPU
stops the workflow there with one sentence, instead of in a job that Snakemake would first have cleared
of its previous outputs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from cifar_resnet.errors import StudyError
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


def check_local_device(requested: str, local: bool) -> None:
    """When the jobs run on this machine (``local``) and the configuration asks for CUDA, that CUDA is
    there. A fresh interpreter asks torch, so that the workflow's own process never imports it; under a
    cluster executor the jobs' nodes decide, which this machine cannot know."""
    if requested != "cuda" or not local:
        return
    probe = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"
    if subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode:
        raise StudyError(
            "runtime.device is 'cuda' but CUDA is not available on this machine, where the jobs would run; "
            "run on a GPU machine, set runtime.device to auto, or submit the jobs to a cluster (--profile)."
        )
