"""cifar-resnet status: a study's state from its files alone."""

import json
from pathlib import Path

import pytest
from test_config import demo_config
from test_summary import train_record

from cifar_resnet import cli
from cifar_resnet.config import Run, load_study
from cifar_resnet.errors import StudyError
from cifar_resnet.layout import LOGS, RUN_DIR, RUN_NAME, run_path
from cifar_resnet.records import HISTORY_COLUMNS
from cifar_resnet.status import describe, run_state, study_state, training_seconds_left

ROOT = Path(__file__).resolve().parents[1]
TWO_DEPTHS = {"study": {"variants": ["paper", "wide"], "depths": [8, 20], "seeds": [0]}}


def write(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def finished(run: Run, wall_seconds: float, deployed: bool = True) -> None:
    record = train_record(run.variant, run.depth, run.seed, dataset=run.dataset, wall_seconds=wall_seconds)
    write(run_path(f"{RUN_DIR}/train.json", run), json.dumps(record))
    write(run_path(f"{RUN_DIR}/eval.json", run), "{}")
    if deployed:
        write(run_path(f"{RUN_DIR}/deploy.json", run), "{}")


def training(run: Run, epochs_done: int, epochs: int, seconds: float, val_seconds: float) -> None:
    rows = [
        ",".join(
            {
                "epoch": str(e),
                "seconds": str(seconds),
                "val_seconds": str(val_seconds),
                "epochs": str(epochs),
            }.get(column, "0")
            for column in HISTORY_COLUMNS
        )
        for e in range(1, epochs_done + 1)
    ]
    write(run_path(f"{RUN_DIR}/history.csv", run), "\n".join([",".join(HISTORY_COLUMNS), *rows]) + "\n")
    write(run_path(f"{LOGS}/train/{RUN_NAME}.log", run), "2026-12-03 INFO epoch 1/5\n")


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = demo_config()
    config["study"].update(TWO_DEPTHS["study"])
    return load_study(config)


def test_each_run_state_comes_from_its_files(study):
    paper8, paper20, wide8, wide20 = (Run("demo", v, d, 0) for v in ("paper", "wide") for d in (8, 20))
    finished(paper8, wall_seconds=80)
    finished(paper20, wall_seconds=200, deployed=False)
    training(wide8, epochs_done=2, epochs=5, seconds=10, val_seconds=2)
    write(run_path(f"{LOGS}/train/{RUN_NAME}.log", wide20), "2026-12-03 ERROR training diverged: ...\n")

    states = {s.run: s for s in study_state(study, deploys=True)}

    assert [states[r].state for r in (paper8, paper20, wide8, wide20)] == [
        "done",
        "trained",
        "training",
        "failed",
    ]
    assert (states[wide8].epoch, states[wide8].epochs, states[wide8].seconds_left) == (2, 5, 3 * 12)
    assert states[wide20].log == Path(run_path(f"{LOGS}/train/{RUN_NAME}.log", wide20))
    assert run_state(paper20, deploys=False).state == "done"  # nothing to deploy: trained is done


def test_the_time_left_counts_waiting_runs_by_their_compute(study):
    paper8, paper20, wide8, wide20 = (Run("demo", v, d, 0) for v in ("paper", "wide") for d in (8, 20))
    finished(paper8, wall_seconds=80)  # 10 s per unit of compute: depth 8, width 1
    training(wide8, epochs_done=1, epochs=3, seconds=5, val_seconds=0)  # 10 s left

    states = study_state(study, deploys=True)

    # waiting: paper ResNet-20 (compute 20: 200 s) and wide ResNet-20 (compute 20 * width^2); one job runs
    width = study.recipes["wide"]["model"]["width"]
    assert training_seconds_left(states, study) == pytest.approx(10 + 200 + 10 * 20 * width**2)


def test_the_command_prints_the_study_with_the_overlay_given(tmp_path, monkeypatch, capsys):
    for name in ("config/config.yaml", "config/demo.yaml"):
        write(str(tmp_path / name), (ROOT / name).read_text())
    write(str(tmp_path / "two.yaml"), json.dumps(TWO_DEPTHS))
    monkeypatch.chdir(tmp_path)
    finished(Run("demo", "paper", 8, 0), wall_seconds=80)

    cli.main(["status", "--configfile", "config/demo.yaml", "two.yaml"])

    printed = capsys.readouterr().out.splitlines()
    assert printed[-2] == "1 done, 0 trained, 0 training, 0 stopped, 0 failed, 3 waiting of 4 runs"
    # nothing runs: paper ResNet-20 200 s, wide (the demo's width 2) 8 * 4 * 10 + 20 * 4 * 10 = 1120 s
    assert printed[-1] == "training time left: about 22.0 min (deployments not included)"


def history_path(run: Run) -> Path:
    return Path(run_path(f"{RUN_DIR}/history.csv", run))


def test_a_last_line_cut_short_is_left_out_not_read_as_the_end(study):
    """A history cut mid-line (a copy or sync under way) says the run has done 3 of 6 epochs, not 4 of 4."""
    run = Run("demo", "paper", 8, 0)
    training(run, epochs_done=4, epochs=6, seconds=10, val_seconds=0)
    text = history_path(run).read_text()
    history_path(run).write_text(text[: text.rindex("\n", 0, -1) + 3])  # the 4th row cut after "4,"
    state = run_state(run, deploys=True)
    assert (state.state, state.epoch, state.epochs, state.seconds_left) == ("training", 3, 6, 30)


@pytest.mark.parametrize(
    ("content", "sentence"),
    [
        (b"epoch,seconds\n1,2\nx,3\n", r"history.csv has a broken line 3 \(could not convert"),
        (b"epoch,seconds\n1,2,3\n", r"history.csv has a broken line 2 \(3 fields, not 2\)"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", r"history.csv is not a text file"),
        (b"a,b\n1,2\n", r"history.csv lacks the columns epoch, seconds"),
    ],
)
def test_a_malformed_history_is_one_sentence_naming_it(study, content, sentence):
    run = Run("demo", "paper", 8, 0)
    history_path(run).parent.mkdir(parents=True)
    history_path(run).write_bytes(content)
    with pytest.raises(StudyError, match=sentence):
        run_state(run, deploys=True)


def test_a_run_a_signal_stopped_is_shown_as_stopped_not_training(study):
    run = Run("demo", "wide", 20, 0)
    training(run, epochs_done=2, epochs=8, seconds=10, val_seconds=0)
    log = run_path(f"{LOGS}/train/{RUN_NAME}.log", run)
    write(
        log,
        "2026-12-07 INFO epoch 2/8 ...\n2026-12-07 ERROR Stopped by SIGTERM (a cluster's time limit, "
        "preemption or scancel) at epoch 3/8, step 5 (iteration 21); its state is saved in results/x.pt\n",
    )
    state = run_state(run, deploys=True)
    assert (state.state, state.stopped_by, state.epoch, state.epochs, state.step) == (
        "stopped",
        "SIGTERM",
        3,
        8,
        5,
    )
    line = describe([state], None).splitlines()[0]
    assert line == (
        "stopped   demo/wide/ResNet-20/seed 0: by SIGTERM (most likely the cluster's time limit; else "
        "preemption or scancel) at epoch 3/8, step 5, its work saved; the same snakemake command resumes it "
        f"(see {log})"
    )


def test_a_folder_where_nothing_has_run_says_so(study):
    states = study_state(study, deploys=True)
    assert "nothing has run in" in describe(states, None) and "no results/ folder" in describe(states, None)
    Path("results").mkdir()
    assert "nothing has run" not in describe(states, None)


def test_the_command_outside_a_study_folder_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^error: There is no config/config.yaml in .*--configfile\.$"):
        cli.main(["status"])
