"""``python -m tools.gpu_check``: its tiny CPU form end to end (the CUDA tests, skipped here; the
benchmark; a real training job through Snakemake), resumed by the same command, and its budget."""

import os
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tools import gpu_check

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-check")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        gpu_check.main([str(folder / "out"), "--small", "--work", str(folder / "work")])
    return folder


@pytest.mark.slow
def test_the_small_form_runs_every_stage_and_packs_its_results_into_five_files(checked):
    out = checked / "out"
    assert sorted(path.name for path in out.iterdir()) == [
        "benchmark.csv",
        "benchmark.png",
        "gpu-check.md",
        "jobs.csv",
        "logs.tar.gz",
    ]
    report = (out / "gpu-check.md").read_text()
    assert "finished: 16 skipped." in report  # the CUDA tests ran, and skipped without CUDA
    assert "| job ResNet-8, 20 iterations | " in report and "failed" not in report
    benchmark = pd.read_csv(out / "benchmark.csv")
    assert (benchmark["images_per_s"] > 0).all() and set(benchmark["depth"]) == {8}
    (job,) = pd.read_csv(out / "jobs.csv").to_dict("records")
    assert (job["depth"], job["iterations"], job["device"][:3]) == (8, 20, "cpu")
    assert 0 < job["overhead_fraction"] < 1
    with tarfile.open(out / "logs.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"tests.log", "benchmark.log", "jobs.log"} <= names
    assert "results/demo/runs/paper/resnet8/seed0/train.json" in names
    assert "results/demo/logs/train/paper/resnet8/seed0.log" in names


@pytest.mark.slow
def test_the_same_command_again_keeps_every_finished_result(checked, monkeypatch):
    monkeypatch.chdir(ROOT)
    before = (checked / "work" / "results/demo/runs/paper/resnet8/seed0/train.json").read_bytes()
    gpu_check.main([str(checked / "again"), "--small", "--work", str(checked / "work")])
    report = (checked / "again" / "gpu-check.md").read_text()
    assert "| CUDA tests " not in report and "finished: 16 skipped." in report  # not run again
    assert (checked / "work" / "benchmark.log").read_text().count("kept from the earlier run") == 5
    assert "Nothing to be done" in (checked / "work" / "jobs.log").read_text()
    assert (checked / "work" / "results/demo/runs/paper/resnet8/seed0/train.json").read_bytes() == before


SLEEPER = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(str(grandchild.pid))
time.sleep(60)
"""


def test_a_stage_past_its_share_of_the_budget_is_stopped_with_its_children(tmp_path):
    started = time.monotonic()
    command = [sys.executable, "-c", SLEEPER, str(tmp_path / "pid")]
    stage = gpu_check.run_stage("sleeper", command, tmp_path, tmp_path / "log", started + 2)
    assert stage.outcome == "cut by the budget" and time.monotonic() - started < 30
    grandchild = int((tmp_path / "pid").read_text())
    for _ in range(50):  # until init has reaped it
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail("a child process outlived its stage")


def test_a_job_trains_the_papers_64k_iterations_where_they_fit_else_a_stated_shorter_duration():
    assert gpu_check.job_duration(100_000, 200) == 64_000  # 82 s of steps + 60 s of overhead
    assert gpu_check.job_duration(14_000, 200) == 15_000  # 140 s at 14,000 images/s: 15,312 iterations
    assert gpu_check.job_duration(None, 200) == 1_000 and gpu_check.job_duration(10, 200) == 1_000
    overrides = gpu_check.timing_overrides(gpu_check.FULL, 110, 16_000)
    assert overrides["study"]["depths"] == [110]
    paper = overrides["variants"]["paper"]["overrides"]
    assert paper["training"]["duration"] == 16_000 and paper["schedule"]["milestones"] == [8_000, 12_000]


def test_the_full_form_runs_the_benchmark_in_interleaved_rounds_in_its_order_of_value():
    from cifar_resnet.cli import parse_args

    args = parse_args(["benchmark", *gpu_check.FULL.benchmark])
    assert args.depths == [20, 110, 56]  # the headline depth, then the second job's, then the rest
    assert args.rounds >= 3 and args.min_seconds >= 1.0 and args.warmup >= 10
    assert args.modes == list(gpu_check.DECIDING_MODES) and gpu_check.STUDY_MODE in args.modes
