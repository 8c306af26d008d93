"""Each of a run's files is named once (cifar_resnet.layout), and each record format has one reader and
one writer (cifar_resnet.records)."""

import json
import re
from pathlib import Path

import pytest

from cifar_resnet import layout
from cifar_resnet.config import Run
from cifar_resnet.errors import StudyError
from cifar_resnet.records import (
    EVAL_RECORD_FIELDS,
    read_eval_record,
    read_history,
    read_trained_history,
    write_record,
)

ROOT = Path(__file__).resolve().parents[1]
# A name as a string, or as the end of a path in one: "eval.json", 'eval.json', f"{RUN_DIR}/eval.json".
QUOTES = [('"', '"'), ("'", "'"), ("/", "[\"']")]
RUN_FILE_NAMES = (
    layout.MODEL,
    layout.HISTORY,
    layout.TRAIN_RECORD,
    layout.EVAL_RECORD,
    layout.DEPLOY_RECORD,
    *layout.DEPLOYED_MODELS.values(),
)


def test_a_runs_file_names_are_spelled_only_in_the_layout():
    """A renamed file changes in one place: no other module, rule, script or tool spells the name."""
    quoted = re.compile(
        "|".join(rf"{start}{re.escape(name)}{end}" for name in RUN_FILE_NAMES for start, end in QUOTES)
    )
    sources = [*(ROOT / "src").rglob("*.py"), *(ROOT / "tools").glob("*.py"), ROOT / "hubconf.py"]
    sources += [*(ROOT / "workflow").rglob("*.smk"), *(ROOT / "workflow").rglob("*.py")]
    sources.append(ROOT / "workflow" / "Snakefile")
    spelled = {
        f"{path.relative_to(ROOT)}:{number}"
        for path in sources
        if path != ROOT / "src/cifar_resnet/layout.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if quoted.search(line)
    }
    assert spelled == set()


def test_run_file_and_seed_dirs_follow_the_run_folder_pattern(tmp_path):
    run = Run("demo", "paper", 20, 1)
    assert layout.run_file(layout.EVAL_RECORD, run) == "results/demo/runs/paper/resnet20/seed1/eval.json"
    for seed in (0, 1, 10):
        (tmp_path / "paper/resnet20" / f"seed{seed}").mkdir(parents=True)
    (tmp_path / "paper/resnet20/notes").mkdir()
    assert [path.name for path in layout.seed_dirs(tmp_path / "paper/resnet20/seed1")] == [
        "seed0",
        "seed1",
        "seed10",
    ]


def test_a_record_lacking_what_its_readers_read_is_not_written(tmp_path):
    record = {field: 0 for field in EVAL_RECORD_FIELDS if field != "confusion_matrix"}
    with pytest.raises(ValueError, match="would lack confusion_matrix"):
        write_record(tmp_path / "eval.json", record, EVAL_RECORD_FIELDS)
    assert not (tmp_path / "eval.json").exists()
    write_record(tmp_path / "eval.json", record | {"confusion_matrix": []}, EVAL_RECORD_FIELDS)
    assert read_eval_record(tmp_path / "eval.json")["confusion_matrix"] == []


def test_a_missing_record_names_the_job_that_writes_it(tmp_path):
    with pytest.raises(StudyError, match=r"eval.json is missing; run that run's training \(which ends"):
        read_eval_record(tmp_path / "eval.json")
    (tmp_path / "eval.json").write_text(json.dumps({"test_error": 5.0}))
    with pytest.raises(StudyError, match="eval.json lacks test_accuracy"):
        read_eval_record(tmp_path / "eval.json")


HEADER = "epoch,seconds,train_accuracy,val_accuracy\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("epoch,seconds\n1,2\n", "lacks the columns train_accuracy, val_accuracy"),
        (HEADER, "has no rows"),
        (HEADER + "1,2,0.5,\n", r"has a broken line 2 \(no val_accuracy\)"),
    ],
)
def test_a_finished_history_needs_its_learning_curves(tmp_path, text, problem):
    """A running training's history needs its epochs and their time only; a finished one's figures need
    a row per epoch with both accuracies."""
    path = tmp_path / "history.csv"
    path.write_text(text)
    read_history(path)
    with pytest.raises(StudyError, match=problem):
        read_trained_history(path)


def test_a_finished_history_reads_every_column_as_a_number(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text(HEADER + "1,2.5,0.5,0.25\n2,2.0,0.75,0.5\n")
    assert read_trained_history(path)[1] == {
        "epoch": 2.0,
        "seconds": 2.0,
        "train_accuracy": 0.75,
        "val_accuracy": 0.5,
    }
