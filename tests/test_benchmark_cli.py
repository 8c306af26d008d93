"""``cifar-resnet benchmark``: the console entry point, a small real run, and rows written as measured,
resumed and failed."""

import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from cifar_resnet import cli
from cifar_resnet.benchmark import runner
from cifar_resnet.benchmark.data import EPOCH_IMAGES
from cifar_resnet.benchmark.modes import DEFAULT_MODES
from cifar_resnet.benchmark.runner import COLUMNS, IDENTITY, read_results
from cifar_resnet.benchmark.timing import Pipeline

ROOT = Path(__file__).parents[1]
SMALL_CPU = ["benchmark", "--small", "--depths", "8", "--device", "cpu"]


@pytest.fixture(autouse=True)
def at_the_root(monkeypatch):
    """The command runs from the repository's root, where config/config.yaml is."""
    monkeypatch.chdir(ROOT)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_console_script_is_an_importable_callable():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["cifar-resnet"].partition(":")
    assert (module, name) == ("cifar_resnet.cli", "main")
    assert callable(getattr(importlib.import_module(module), name))


@pytest.mark.slow  # a Python process that imports torch
def test_python_m_runs_the_command_line(tmp_path):
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "cifar_resnet.cli", *SMALL_CPU, "--config", "nowhere.yaml"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert done.returncode == 1 and "error: " in done.stderr and "nowhere.yaml does not exist" in done.stderr


@pytest.mark.slow  # the benchmark's smallest whole run
def test_small_run_writes_csv_and_plot_and_marks_the_modes_the_cpu_does_not_apply_na(
    tmp_path, capsys, restore_threads
):
    cli.main([*SMALL_CPU, "--out", str(tmp_path)])
    frame = read_results(tmp_path / "benchmark.csv")
    assert list(frame.columns) == COLUMNS
    assert (tmp_path / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_mode = frame.set_index(["pipeline", "mode"])
    for mode in DEFAULT_MODES[1:]:
        skipped = by_mode.loc[("ours", mode)]
        assert skipped["note"].startswith("n/a on cpu"), mode
        assert math.isnan(skipped["images_per_s"]) and math.isnan(skipped["steps"])
    measured = frame[frame["note"] == ""]
    assert set(measured["pipeline"]) == {"ours", "classical", "packed", "sequential", "jobs"}
    assert (measured["images_per_s"] > 0).all() and (measured["images_per_cpu_s"] > 0).all()
    assert (measured["images_per_s_min"] <= measured["images_per_s"]).all()
    assert (measured["images_per_s"] <= measured["images_per_s_max"]).all()
    assert all(len(runner.rounds_of(text)) == 3 for text in measured["images_per_s_by_round"])
    assert (measured["device"] == "cpu").all() and (measured["depth"] == 8).all()
    assert (frame["cores"] == 2).all() and (frame["rounds"] == 3).all()  # 1 thread + 1 worker, or 2 threads
    classical = by_mode.loc[("classical", "eager, 1 workers")]
    assert classical["steps"] == 20  # 10 times the 1 worker's 2 prefetched batches
    models = measured["mode"].str.extract(r"K=(\d+)")[0].fillna("1").astype(int)
    expected_epoch = models * EPOCH_IMAGES / measured["images_per_s"]
    assert measured["seconds_per_epoch"].tolist() == pytest.approx(expected_epoch.tolist())
    printed = capsys.readouterr().out
    assert f"torch {torch.__version__}" in printed and "| ours" in printed and "n/a on cpu" in printed
    assert "| winner" in printed and "machine: cpu, " in printed and "| cpu_ratio" in printed


def test_the_batch_size_is_the_recipes_unless_given(monkeypatch, tmp_path):
    fake = FakeMeasurements(monkeypatch)
    cli.main(
        [
            "benchmark",
            "--depths",
            "8",
            "--device",
            "cpu",
            "--packed",
            "--modes",
            "eager",
            "--out",
            str(tmp_path),
        ]
    )
    assert fake.calls == ["our_pipeline", "classical_pipeline"]
    assert set(read_results(tmp_path / "benchmark.csv")["batch_size"]) == {128}
    with pytest.raises(SystemExit, match="study config nowhere.yaml does not exist"):
        cli.main([*SMALL_CPU, "--config", "nowhere.yaml", "--out", str(tmp_path)])


class FakeMeasurements:
    """Stands in for the four pipeline builders: each build gives a pipeline with a distinct step time,
    and the build numbered ``interrupt_at`` raises KeyboardInterrupt (a kill) or ``error`` for the
    classical pipeline."""

    def __init__(self, monkeypatch, interrupt_at=None, classical_error=None):
        self.calls, self.interrupt_at, self.classical_error = [], interrupt_at, classical_error
        for name in ("our_pipeline", "classical_pipeline", "k_model_pipeline", "jobs_pipeline"):
            monkeypatch.setattr(runner, name, self.build(name))

    def build(self, name):
        def build(*args, **kwargs):
            self.calls.append(name)
            if len(self.calls) == self.interrupt_at:
                raise KeyboardInterrupt
            if name == "classical_pipeline" and self.classical_error:
                raise self.classical_error
            step = 0.001 * len(self.calls)
            return Pipeline(lambda steps: (0.0, step * steps), 16, torch.device("cpu"), 1)

        return build


def test_rows_are_written_as_measured_and_resume_measures_only_the_missing_ones(
    tmp_path, monkeypatch, restore_threads
):
    complete = tmp_path / "complete"
    FakeMeasurements(monkeypatch)
    cli.main([*SMALL_CPU, "--out", str(complete)])
    expected = read_results(complete / "benchmark.csv")
    assert expected["images_per_s"].notna().sum() == 5  # ours eager, classical, packed, sequential, jobs

    killed = FakeMeasurements(monkeypatch, interrupt_at=4)  # building the K-model group's sequential
    with pytest.raises(KeyboardInterrupt):
        cli.main([*SMALL_CPU, "--out", str(tmp_path)])
    written = read_results(tmp_path / "benchmark.csv")
    assert len(killed.calls) == 4 and written["images_per_s"].notna().sum() == 2
    clocked = ["images_per_cpu_s", "cpu_seconds", "images_per_cpu_s_by_round"]  # the fakes use real CPU time
    # every group up to the kill is on disk
    assert written.drop(columns=clocked).equals(expected.drop(columns=clocked).iloc[: len(written)])

    resumed = FakeMeasurements(monkeypatch)
    cli.main([*SMALL_CPU, "--out", str(tmp_path), "--resume"])
    assert resumed.calls == ["k_model_pipeline", "k_model_pipeline", "jobs_pipeline"]
    final = read_results(tmp_path / "benchmark.csv")
    assert final[IDENTITY].equals(expected[IDENTITY])
    assert final["images_per_s"].iloc[: len(written)].equals(written["images_per_s"])  # kept, not remeasured
    assert (tmp_path / "benchmark.png").exists()

    again = FakeMeasurements(monkeypatch)
    cli.main([*SMALL_CPU, "--out", str(tmp_path)])  # without --resume: a fresh run
    assert len(again.calls) == 5


def test_a_failed_measurement_is_recorded_the_others_still_run_and_the_command_fails(
    tmp_path, monkeypatch, restore_threads
):
    FakeMeasurements(monkeypatch, classical_error=RuntimeError("CUDA out of memory"))
    with pytest.raises(SystemExit, match="1 measurement\\(s\\) failed.*RuntimeError: CUDA out of memory"):
        cli.main([*SMALL_CPU, "--out", str(tmp_path)])
    frame = read_results(tmp_path / "benchmark.csv").set_index("pipeline")
    assert frame.loc["classical", "note"] == "failed: RuntimeError: CUDA out of memory"
    assert math.isnan(frame.loc["classical", "images_per_s"]) and math.isnan(frame.loc["classical", "steps"])
    assert frame.drop(index="classical")["images_per_s"].notna().sum() == 4

    retried = FakeMeasurements(monkeypatch)
    cli.main([*SMALL_CPU, "--out", str(tmp_path), "--resume"])
    assert retried.calls == ["our_pipeline", "classical_pipeline"]  # its group again: ratios are per round


def test_resume_refuses_rows_it_would_not_measure_again_and_leaves_them_on_disk(
    tmp_path, monkeypatch, restore_threads
):
    FakeMeasurements(monkeypatch)
    cli.main([*SMALL_CPU, "--out", str(tmp_path)])
    csv_path = tmp_path / "benchmark.csv"
    before = csv_path.read_bytes()
    refused = FakeMeasurements(monkeypatch)
    with pytest.raises(
        SystemExit,
        match=f"{csv_path} holds 5 measured row.*ResNet-8 ours eager, batch 16 on 2 cores, 3 rounds",
    ):
        cli.main([*SMALL_CPU, "--out", str(tmp_path), "--resume", "--min-seconds", "3"])
    assert refused.calls == [] and csv_path.read_bytes() == before

    pd.read_csv(csv_path).drop(columns="machine").to_csv(csv_path, index=False)
    with pytest.raises(SystemExit, match="lacks the column\\(s\\) machine: it comes from another version"):
        cli.main([*SMALL_CPU, "--out", str(tmp_path), "--resume"])
    assert refused.calls == []


def test_fewer_than_three_rounds_are_refused(capsys):
    with pytest.raises(SystemExit):
        cli.parse_args([*SMALL_CPU, "--rounds", "2"])
    assert "--rounds must be at least 3" in capsys.readouterr().err
    assert cli.parse_args([*SMALL_CPU, "--rounds", "3"]).rounds == 3
