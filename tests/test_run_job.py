"""What every script's run_job does: a job that fails ends with one line, no traceback, and a job's
objects are left out of its process's last garbage collection."""

import errno
import gc
import weakref
from types import SimpleNamespace

import pytest

from cifar_resnet.errors import StudyError
from cifar_resnet.workflow import run_job


@pytest.fixture(autouse=True)
def unfrozen():
    """run_job freezes what this test process holds; collect it normally again afterwards."""
    yield
    gc.unfreeze()


def interrupted():
    raise KeyboardInterrupt


def refused():
    raise StudyError("study.depths has 21, which is not a CIFAR ResNet depth.")


def disk_full():
    raise OSError(errno.ENOSPC, "No space left on device", "results/demo/runs/paper/resnet20/seed0/model.pt")


def read_only():
    raise OSError(errno.EROFS, "Read-only file system", "results/demo/resume/paper/resnet20/seed0.pt")


def broken_device():
    raise OSError(errno.EIO, "Input/output error")


@pytest.mark.parametrize(
    ("job", "resumable", "code", "line"),
    [
        (
            interrupted,
            True,
            130,
            "Interrupted by Ctrl-C; run the same snakemake command with --rerun-incomplete to resume it "
            "from its last saved epoch.",
        ),
        (
            interrupted,
            False,
            130,
            "Interrupted by Ctrl-C; run the same snakemake command with --rerun-incomplete to run it again.",
        ),
        (refused, False, 1, "study.depths has 21, which is not a CIFAR ResNet depth."),
        (
            disk_full,
            False,
            1,
            "The job stopped at results/demo/runs/paper/resnet20/seed0/model.pt: No space left on device; "
            "free space on that file system (or move the results there to a larger one), then run the same "
            "snakemake command again.",
        ),
        (
            read_only,
            True,
            1,
            "The job stopped at results/demo/resume/paper/resnet20/seed0.pt: Read-only file system; make "
            "that file system writable, then run the same snakemake command again.",
        ),
        (
            broken_device,
            False,
            1,
            "The job stopped: Input/output error; fix that, then run the same snakemake command again.",
        ),
    ],
)
def test_a_failed_job_ends_with_one_line(tmp_path, capfd, job, resumable, code, line):
    snakemake = SimpleNamespace(log=[str(tmp_path / "job.log")], threads=1)
    with pytest.raises(SystemExit) as exit:
        run_job(snakemake, job, resumable=resumable)
    assert exit.value.code == code
    terminal = capfd.readouterr().err.strip().splitlines()
    assert len(terminal) == 1 and terminal[0].endswith(f"ERROR {line}")
    assert "Traceback" not in (tmp_path / "job.log").read_text()


class Node:
    pass


def test_a_job_leaves_the_imports_objects_and_its_own_out_of_garbage_collections(tmp_path):
    """Collections during the job and at interpreter exit would walk every object torch created; frozen,
    they skip them."""
    made, frozen_at_start = [], []

    def job():
        frozen_at_start.append(gc.get_freeze_count())
        node = Node()
        node.itself = node  # only a garbage collection frees a cycle
        made.append(weakref.ref(node))

    gc.unfreeze()
    run_job(SimpleNamespace(log=[str(tmp_path / "job.log")], threads=1), job)
    assert frozen_at_start[0] > 0  # what this process held before the job
    gc.collect()
    assert made[0]() is not None
    gc.unfreeze()
    gc.collect()
    assert made[0]() is None
