"""What the workflow checks in its main process before any job starts: the files that earlier runs
left and jobs will read, the README markers the readme rule splices between, and, when the jobs run on
this machine, the device the configuration asks for. A corrupt file, a missing marker or an absent GPU
stops the workflow there with one sentence, instead of in a job that Snakemake would first have cleared
of its previous outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from cifar_resnet.config import Run
from cifar_resnet.errors import StudyError
from cifar_resnet.files import check_tensor_file
from cifar_resnet.layout import (
    DEPLOY_LOG,
    DEPLOY_RECORD,
    EVAL_RECORD,
    HISTORY,
    MODEL,
    RESUME_FILE,
    TRAIN_LOG,
    TRAIN_RECORD,
    run_path,
)
from cifar_resnet.readme import check_markers
from cifar_resnet.records import read_deploy_record, read_eval_record, read_train_record, read_trained_history

# What the jobs that read a run's files need of each: its format's reader.
RUN_FILE_CHECKS = {
    MODEL: check_tensor_file,
    HISTORY: read_trained_history,
    TRAIN_RECORD: read_train_record,
    EVAL_RECORD: read_eval_record,
    DEPLOY_RECORD: read_deploy_record,
}


# Preparing is deterministic, but a newer prepared file makes Snakemake retrain every run on it.
REPREPARE = (
    "delete it and run the same snakemake command again, which prepares it anew and trains its runs "
    "again (the README's Reliability section says how to keep those already trained)"
)


def check_before_jobs(
    targets: Iterable[str], prepared: Iterable[str], runs: Iterable[Run], readme: Path | None
):
    """Check that the jobs can write every file they write (the ``targets``, the ``prepared`` datasets,
    the trained ``runs``' resume states and logs, and ``readme`` when it is given), that those that exist
    and that jobs read are whole, and ``readme``'s markers; raises StudyError naming the first problem."""
    prepared = [Path(path) for path in prepared]
    run_files = [run_path(pattern, run) for run in runs for pattern in (RESUME_FILE, TRAIN_LOG, DEPLOY_LOG)]
    outputs = [Path(path) for path in (*targets, *run_files)]
    check_writable([*outputs, *prepared, *([readme] if readme else [])])
    for path in outputs:
        if path.name in RUN_FILE_CHECKS and path.exists():
            RUN_FILE_CHECKS[path.name](path)
    for path in prepared:
        if path.exists():
            check_tensor_file(path, REPREPARE)
    if readme is not None:
        check_markers(readme)


def check_writable(paths: Iterable[Path]) -> None:
    """That the jobs can write each of ``paths``: its folder, or the nearest one above it that exists
    (where the job creates the rest), is a folder this process may write into."""
    for folder in sorted({path.parent for path in paths}):
        existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
        if not existing.is_dir():
            problem = "is a file"
        elif os.statvfs(existing).f_flag & os.ST_RDONLY:
            problem = "is on a read-only file system"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = "is not writable by this user"
        else:
            continue
        where = "it" if existing == folder else f"{existing}, where it would be created,"
        raise StudyError(
            f"The jobs cannot write {folder}: {where} {problem}; make it a writable folder (or run the "
            "workflow from a folder where it is one) and run the same command again."
        )


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
