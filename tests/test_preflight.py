"""The main process's checks of the folders the jobs will write (the end-to-end cases, a read-only
mount among them, are in test_workflow.py)."""

import pytest

from cifar_resnet.errors import StudyError
from cifar_resnet.preflight import check_writable


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
