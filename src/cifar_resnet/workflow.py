"""What every script of the workflow shares: logging into the rule's log file, the job's thread
count, user-fixable errors reported as one sentence instead of a traceback, and for a resumable job a
cluster's SIGTERM turned into a stop where its work can be saved."""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable

from cifar_resnet.errors import StudyError


class Stopped(StudyError):
    """A job that saved its work when asked to stop, and says where it stopped."""


class StopRequest:
    """The signal a cluster sends before it kills a job (SLURM at its time limit, on preemption or
    scancel: SIGTERM, then SIGKILL some seconds later), remembered rather than obeyed at once, so that a
    resumable job stops at the next point where it can save its work. Call it for whether one came."""

    def __init__(self) -> None:
        self.name: str | None = None

    def __call__(self) -> bool:
        return self.name is not None

    def receive(self, signum: int, frame) -> None:
        self.name = signal.Signals(signum).name


stop_request = StopRequest()


def run_job(snakemake, job: Callable[[], object], resumable: bool = False) -> None:
    """Run ``job`` with the rule's logging; a StudyError or Ctrl-C ends it with one line, no traceback.
    ``resumable``: the job keeps its progress across a kill (training's resume state)."""
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setLevel(
        logging.WARNING
    )  # epoch lines go to the log file only; problems show in the terminal too
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=[logging.FileHandler(snakemake.log[0]), terminal],
        force=True,
    )
    if "torch" in sys.modules:  # report jobs never import torch; importing it here would cost them seconds
        sys.modules["torch"].set_num_threads(max(1, snakemake.threads))
    # Garbage collections walk every object they track: frozen, the objects of the imports are left out
    # of the job's collections, and the job's own out of the interpreter's last one at exit, which
    # Snakemake waits for (docs/benchmark.md).
    gc.freeze()
    if resumable:
        signal.signal(signal.SIGTERM, stop_request.receive)
    try:
        job()
    except Stopped as error:
        logging.getLogger("cifar_resnet").error("%s", error)
        sys.exit(128 + signal.SIGTERM)
    except StudyError as error:
        logging.getLogger("cifar_resnet").error("%s", error)
        sys.exit(1)
    except OSError as error:
        logging.getLogger("cifar_resnet").error("%s", file_system_fault(error))
        sys.exit(1)
    except KeyboardInterrupt:
        then = "resume it from its last saved epoch" if resumable else "run it again"
        logging.getLogger("cifar_resnet").error(
            "Interrupted by Ctrl-C; run the same snakemake command with --rerun-incomplete to %s.", then
        )
        sys.exit(130)
    finally:
        gc.freeze()


# What to do about a file system fault, by its errno; other errors say what the system said.
FAULT_REMEDIES = {
    errno.ENOSPC: "free space on that file system (or move the results there to a larger one)",
    errno.EDQUOT: "free space within your quota (or move the results there to a larger file system)",
    errno.EROFS: "make that file system writable",
    errno.EACCES: "make it writable for this user",
    errno.EPERM: "make it writable for this user",
}


def file_system_fault(error: OSError) -> str:
    """One sentence for an OSError a job met: the path, the cause and, for faults of space and
    permission, what to do before running the same command again."""
    where = f" at {error.filename}" if error.filename else ""
    cause = (error.strerror or str(error)).rstrip(".")
    remedy = FAULT_REMEDIES.get(error.errno, "fix that")
    return f"The job stopped{where}: {cause}; {remedy}, then run the same snakemake command again."


def whole_number_from_environment(name: str, what: str, example: str, minimum: int) -> int | None:
    """The whole number in $name, a setting of the jobs that is not part of any run's configuration (so
    changing it retrains nothing), or None when it is unset."""
    raw = os.environ.get(name)
    if raw is None:
        return None
    if not raw.strip().isdigit() or int(raw) < minimum:
        at_least = f", at least {minimum}," if minimum else ""
        raise StudyError(f"{name} must be a whole number of {what}{at_least} such as {example}, not {raw!r}.")
    return int(raw)
