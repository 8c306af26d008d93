"""The main process's checks of the folders the jobs will write (the end-to-end cases, a read-only
mount among them, are in test_workflow.py)."""

from pathlib import Path

import pytest

from cifar_resnet.config import Run
from cifar_resnet.errors import StudyError
from cifar_resnet.layout import HISTORY, run_file
from cifar_resnet.preflight import check_before_jobs, check_writable


def test_folders_that_exist_or_can_be_created_pass(tmp_path):
    (tmp_path / "results").mkdir()
    check_writable([tmp_path / "results" / "model.pt", tmp_path / "results" / "new" / "deeper" / "eval.json"])


def test_a_file_where_a_folder_must_be_created_is_named(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(StudyError) as error:
        check_writable([tmp_path / "ok" / "x.json", tmp_path / "results" / "demo" / "summary.csv"])
    assert str(error.value) == (
        f"The jobs cannot write {tmp_path}/results/demo: {tmp_path}/results, where it would be created, is a "
        "file; make it a writable folder (or run the workflow from a folder where it is one) and run the "
        "same command again."
    )


def test_the_files_earlier_runs_left_are_read_by_their_formats_reader(tmp_path, monkeypatch):
    """Each existing run file the jobs will read is checked by its format's own reader, before any job."""
    monkeypatch.chdir(tmp_path)
    run = Run("demo", "paper", 8, 0)
    history = Path(run_file(HISTORY, run))
    history.parent.mkdir(parents=True)
    history.write_text("epoch,seconds,train_accuracy,val_accuracy\n1,2.0,0.5,\n")
    check_before_jobs([], [], [run], None)  # not a target: not read
    with pytest.raises(StudyError, match=r"history.csv has a broken line 2 \(no val_accuracy\)"):
        check_before_jobs([str(history)], [], [run], None)


def test_the_runs_logs_and_resume_states_must_be_writable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = Run("demo", "paper", 8, 0)
    Path("results/demo").mkdir(parents=True)
    Path("results/demo/resume").write_text("a file where the resume states' folder goes")
    with pytest.raises(StudyError, match="The jobs cannot write results/demo/resume/paper/resnet8"):
        check_before_jobs([], [], [run], None)
