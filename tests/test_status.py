"""cifar-resnet status: a study's state from its files alone."""

import json
from pathlib import Path

import pytest
from test_config import demo_config

from cifar_resnet import cli
from cifar_resnet.config import Run, load_study
from cifar_resnet.layout import LOGS, RUN_DIR, RUN_NAME, run_path
from cifar_resnet.run import HISTORY_COLUMNS
from cifar_resnet.status import run_state, study_state, training_seconds_left

ROOT = Path(__file__).resolve().parents[1]
TWO_DEPTHS = {"study": {"variants": ["paper", "wide"], "depths": [8, 20], "seeds": [0]}}


def write(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def finished(run: Run, wall_seconds: float, deployed: bool = True) -> None:
    write(run_path(f"{RUN_DIR}/train.json", run), json.dumps({"wall_seconds": wall_seconds}))
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
    assert printed[-2] == "1 done, 0 trained, 0 training, 0 failed, 3 waiting of 4 runs"
    # nothing runs: paper ResNet-20 200 s, wide (the demo's width 2) 8 * 4 * 10 + 20 * 4 * 10 = 1120 s
    assert printed[-1] == "training time left: about 22.0 min (deployments not included)"
