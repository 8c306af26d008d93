"""``python -m tools.timings``: real jobs' train.json against the speed targets."""

import subprocess
import sys
from pathlib import Path

import pytest
from test_summary import deployment, eval_record, train_record

from cifar_resnet.files import read_json, write_json
from tools.timings import (
    job_files,
    job_timings,
    job_types,
    main,
    summaries,
    target_verdicts,
    workflow_wall_seconds,
)

ROOT = Path(__file__).resolve().parents[1]


def write_train_json(folder, variant, depth, iterations, train_seconds, job_seconds, overhead, **extra):
    path = folder / "runs" / variant / f"resnet{depth}" / "seed0" / "train.json"
    summary = train_record(variant, depth, 0, dataset="demo", device="cuda (H100)")
    summary |= {"iterations": iterations, "train_seconds": train_seconds, "images_per_s": 1000.0, **extra}
    summary["timings"] = {
        "startup_seconds": 2.0,
        "setup_seconds": 1.0,
        "first_step_seconds": 0.5,
        "training_seconds": train_seconds,
        "job_seconds": job_seconds,
        "overhead_fraction": overhead,
        "started_at": 1000.0,
    }
    write_json(path, summary)
    return path


def write_job_json(path, work_name, work_seconds, job_seconds, started_at):
    """A whole eval.json or deploy.json (by ``path``'s name) with the job's timings."""
    timings = {"startup_seconds": 2.0, "setup_seconds": 0.5, work_name: work_seconds}
    timings |= {"job_seconds": job_seconds, "overhead_fraction": 1 - work_seconds / job_seconds}
    record = eval_record() if path.name == "eval.json" else deployment(8.0)
    write_json(path, record | {"timings": {**timings, "started_at": started_at}})


def write_eval_json(folder, variant, depth, inference_seconds, job_seconds, started_at):
    path = folder / "runs" / variant / f"resnet{depth}" / "seed0" / "eval.json"
    write_job_json(path, "inference_seconds", inference_seconds, job_seconds, started_at)


def test_job_timings_judge_the_full_paper_runs_against_the_targets(tmp_path):
    seconds = {20: (80.0, 100.0, 0.12), 32: (110.0, 120.0, 0.1), 44: (150.0, 160.0, 0.1)}
    seconds |= {56: (190.0, 200.0, 0.1), 110: (700.0, 320.0, 0.05)}
    for depth, (train_seconds, job_seconds, overhead) in seconds.items():
        write_train_json(tmp_path, "paper", depth, 64_000, train_seconds, job_seconds, overhead)
    write_train_json(tmp_path, "wide", 20, 64_000, 900.0, 950.0, 0.5)  # not the paper recipe
    short_run = write_train_json(tmp_path / "elsewhere", "paper", 20, 50, 9.0, 12.0, 0.3)

    timings = job_timings(summaries([tmp_path, short_run]))
    assert len(timings) == 7
    short = timings[timings["iterations"] == 50].iloc[0]
    assert short["seconds_per_64k"] == pytest.approx(9.0 * 64_000 / 50)

    verdicts = target_verdicts(timings).set_index("target")
    assert verdicts["met"].to_dict() == {
        "ResNet-20 training": "yes",
        "ResNet-20 job overhead": "no",
        "ResNet-110 training": "no",
        "the five depths' jobs together": "yes",
    }
    assert verdicts.loc["the five depths' jobs together", "measured"] == "900.0 s"  # 100+120+160+200+320
    assert verdicts.loc["ResNet-20 job overhead", "measured"] == "12.0 %"
    assert (verdicts["device"] == "cuda (H100)").all()
    assert target_verdicts(timings[timings["depth"] != 110]).shape[0] == 2  # no 110: two checks


def test_job_timings_refuse_a_train_json_without_timings_and_a_missing_path(tmp_path, capsys):
    path = write_train_json(tmp_path, "paper", 20, 64_000, 80.0, 90.0, 0.1)
    main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| ResNet-20 training" in printed and "| yes" in printed and "12.5%" not in printed
    summary = read_json(path)
    del summary["timings"]
    write_json(path, summary)
    with pytest.raises(
        SystemExit, match="train.json lacks timings; delete it and run the same snakemake command again"
    ):
        main([str(tmp_path)])
    with pytest.raises(SystemExit, match="nowhere does not exist"):
        main([str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="no train.json to read"):
        main([str(tmp_path / "runs")])  # a folder without runs/*/resnet*/...


def test_timings_say_when_no_target_applies(tmp_path, capsys):
    write_train_json(tmp_path, "paper", 20, 50, 9.0, 12.0, 0.3)
    main([str(tmp_path)])
    assert "no target applies" in capsys.readouterr().out


def test_timings_say_where_each_job_types_time_went_and_the_workflows_wall_time(tmp_path, capsys):
    write_train_json(tmp_path, "paper", 20, 50, 10.0, 14.0, 0.32)  # steady training 9.5 s, 1000 to 1014
    write_train_json(tmp_path, "paper", 8, 50, 4.0, 8.0, 0.56)  # steady 3.5 s, 1000 to 1008
    write_eval_json(tmp_path, "paper", 20, 3.0, 6.0, started_at=1014.0)
    write_eval_json(tmp_path, "paper", 8, 1.0, 4.0, started_at=1020.0)  # ends last, at 1024
    write_job_json(tmp_path / "runs/paper/resnet8/seed0/deploy.json", "deploy_seconds", 2.0, 5.0, 1008.0)
    types = job_types(summaries([tmp_path]), job_files([tmp_path])).set_index("job")
    assert list(types.index) == ["training", "evaluation", "deployment"]
    assert types.loc["deployment", "work"] == pytest.approx(2.0) and types.loc["deployment", "jobs"] == 1
    assert types.loc["training", "jobs"] == 2 and types.loc["evaluation", "jobs"] == 2
    assert types.loc["training", "work"] == pytest.approx(13.0)
    assert types.loc["training", "overhead"] == pytest.approx(1 - 13.0 / 22.0)
    assert types.loc["evaluation", "work"] == pytest.approx(4.0)
    assert types.loc["evaluation", "overhead"] == pytest.approx(1 - 4.0 / 10.0)
    assert types.loc["training", "median_overhead"] == pytest.approx(0.44)
    assert workflow_wall_seconds(types.reset_index()) == pytest.approx(24.0)
    main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert (
        "| evaluation |" in printed
        and "workflow: 24.0 s" in printed
        and "13.0 s of steady training" in printed
    )


@pytest.mark.slow  # a Python process that imports torch
def test_python_m_runs_the_tool_from_the_repositorys_root(tmp_path):
    command = [sys.executable, "-m", "tools.timings", str(tmp_path / "nowhere")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and "error: " in done.stderr and "nowhere does not exist" in done.stderr
