"""What every script's run_job does with a job that fails: one line, no traceback."""

from types import SimpleNamespace

import pytest

from cifar_resnet.errors import StudyError
from cifar_resnet.workflow import run_job


def interrupted():
    raise KeyboardInterrupt


def refused():
    raise StudyError("study.depths has 21, which is not a CIFAR ResNet depth.")


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
