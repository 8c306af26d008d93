"""``python -m tools.gpu_check OUT``: what the GPU path has left to prove, in one command that keeps to
a time budget (GPU_CHECK says what it runs). Each stage runs as a child process stopped at its share of
the budget; what it finished stays in the work folder, and the same command continues from there.
``--small`` is the tiny CPU form that CI runs. See docs/benchmark.md."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

import cifar_resnet
from cifar_resnet.benchmark import runner, tables
from cifar_resnet.config import Run
from cifar_resnet.errors import StudyError, exit_on_study_error
from cifar_resnet.files import atomic_output, read_json, write_csv, write_json, write_text
from cifar_resnet.layout import HISTORY, LOGS, RESULTS, TRAIN_RECORD, run_file
from tools import timings

GPU_CHECK = """What the GPU path has left to prove, within a time budget and in this order: the CUDA
tests, the benchmark at depths 20, 110 and 56 in the modes that decide the defaults (with the
classical pipeline on equal cores, then K = 1, 3, 8), in interleaved rounds, and one real training
job per depth 20 and 110 through Snakemake with config/timing.yaml. Finished results stay in --work,
so the same command resumes; OUT receives the report (gpu-check.md), the benchmark's CSV and plot,
jobs.csv and logs.tar.gz."""
REPOSITORY = Path(__file__).resolve().parents[1]  # its Snakefile, config and tests
DATASET = "demo"  # config/timing.yaml's
TEST_SHARE, BENCHMARK_SHARE = 0.35, 0.35  # of the budget, each ending at its cumulative mark; jobs: the rest
PACKING_SECONDS = 15.0  # kept back for writing OUT
JOB_OVERHEAD_SECONDS = 60.0  # per job on top of its training steps: start-up, compilation, validation
PAPER_BATCH = 128
# The modes that decide the defaults (bf16 and channels_last on, compile on, CUDA graphs off) against
# their alternatives; the jobs' speed is read from the study's own mode.
DECIDING_MODES = (
    "eager",
    "eager+bf16+channels_last",
    "compile+bf16+channels_last",
    "compile+bf16+channels_last+cuda_graphs",
)
STUDY_MODE = "compile+bf16+channels_last"


@dataclass(frozen=True)
class Form:
    """What one form of the check runs."""

    device: str
    benchmark: list[str]  # the benchmark's options
    depths: tuple[int, ...]  # one training job each, in this order
    overrides: dict = field(default_factory=dict)  # on top of config/timing.yaml
    duration: int | None = None  # fixed iterations per job; None: from the budget and the benchmark


# Depths in order of value: ResNet-20 carries the headline targets, ResNet-110 the other and the second
# job's duration; the benchmark measures ours and the classical pipeline at every depth before the
# K-model rows. Each row in 3 interleaved rounds of repeats of at least a second, after 10 warm-up
# steps (compilation, CUDA graph capture).
FULL = Form(
    device="cuda",
    benchmark=["--depths", "20", "110", "56", "--modes", *DECIDING_MODES, "--packed", "1", "3", "8"]
    + ["--min-seconds", "1", "--warmup", "10", "--rounds", "3"],
    depths=(20, 110),
)
SMALL = Form(
    device="cpu",
    benchmark=["--small", "--depths", "8", "--modes", "eager", "--device", "cpu"],
    depths=(8,),
    overrides={
        "data": {"demo": {"seed": 0, "train_size": 400, "test_size": 100}},
        "recipe": {"training": {"batch_size": 32}},
        "runtime": {"device": "cpu"},
    },
    duration=20,
)


@dataclass
class Stage:
    name: str
    seconds: float
    outcome: str  # finished, failed (exit status N), or cut by the budget


def run_stage(name: str, command: list[str], cwd: Path, log: Path, until: float) -> Stage:
    """Run ``command`` in its own process group, its output into ``log``, stopped (SIGTERM, then
    SIGKILL) at the monotonic time ``until``: its children, Snakemake's jobs or the benchmark's job
    processes, stop with it."""
    started = time.monotonic()
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([package_root(), os.environ.get("PYTHONPATH", "")]),
    }
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        process = subprocess.Popen(
            command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )
        try:
            status = process.wait(timeout=max(1.0, until - time.monotonic()))
            outcome = "finished" if status == 0 else f"failed (exit status {status})"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            outcome = "cut by the budget"
    return Stage(name, time.monotonic() - started, outcome)


def package_root() -> str:
    """The folder the child processes import cifar_resnet from: this one's."""
    return str(Path(cifar_resnet.__file__).resolve().parents[1])


def test_outcomes(log: Path) -> dict[str, int]:
    """pytest -v's verdicts in ``log``, counted."""
    verdicts = re.findall(r"::\S+ (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", log.read_text())
    return {verdict.lower(): verdicts.count(verdict) for verdict in sorted(set(verdicts))}


def job_duration(images_per_s: float | None, seconds: float) -> int:
    """Iterations of a paper-recipe job that fit ``seconds`` at ``images_per_s``: the paper's 64k
    where they fit, else a multiple of 1,000 (at least 1,000)."""
    if images_per_s is None:
        return 1_000
    fits = (seconds - JOB_OVERHEAD_SECONDS) * images_per_s / PAPER_BATCH
    return (
        timings.PAPER_ITERATIONS
        if fits >= timings.PAPER_ITERATIONS
        else max(1_000, int(fits) // 1_000 * 1_000)
    )


def study_speed(benchmark: pd.DataFrame | None, depth: int) -> float | None:
    """Our images/s at ``depth`` in the study's mode, as the benchmark measured it."""
    if benchmark is None:
        return None
    rows = benchmark[(benchmark["pipeline"] == "ours") & (benchmark["depth"] == depth)]
    rows = rows[(rows["mode"] == STUDY_MODE) & rows["images_per_s"].notna()]
    return float(rows["images_per_s"].iloc[0]) if len(rows) else None


def timing_overrides(form: Form, depth: int, iterations: int) -> dict:
    """config/timing.yaml's study reduced to ResNet-``depth``, its paper variant trained for
    ``iterations`` with the paper's milestones at the same fractions (32k and 48k of 64k), and no
    deployment: the check times training, and a GPU machine need not have onnxruntime."""
    overrides = yaml.safe_load(yaml.safe_dump(form.overrides))  # a deep copy
    overrides.setdefault("study", {})["depths"] = [depth]
    overrides["deploy"] = {"enabled": False}
    milestones = [iterations // 2, iterations * 3 // 4]
    overrides["variants"] = {
        "paper": {
            "overrides": {
                "training": {"unit": "iterations", "duration": iterations},
                "schedule": {"kind": "multistep", "milestones": milestones, "factors": [0.1, 0.01]},
            }
        }
    }
    return overrides


def gpu_check(out: Path, work: Path, budget: float, small: bool) -> Path:
    """Run the check into ``work`` (kept between runs: the same command resumes) and pack its results
    into ``out``; returns the report's path."""
    started = time.monotonic()
    deadline = started + budget - PACKING_SECONDS
    form = SMALL if small else FULL
    device = runner.resolve_device(form.device)
    if device.type != form.device:
        raise StudyError("CUDA is not available here; --small runs the check's tiny CPU form.")
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    state_path = work / "state.json"
    state = read_json(state_path) if state_path.exists() else {"durations": {}}
    stages = []

    tests_log = work / "tests.log"
    if state.get("tests") is None:
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "cuda",
            "-v",
            "-p",
            "no:cacheprovider",
            "-n",
            "0",  # in this process, one test at a time: they share the one GPU, whose jobs they time
            "tests/test_cuda.py",
        ]
        tests_log.unlink(missing_ok=True)
        stage = run_stage("CUDA tests", command, REPOSITORY, tests_log, started + TEST_SHARE * budget)
        stages.append(stage)
        if stage.outcome != "cut by the budget":
            state["tests"] = {"outcome": stage.outcome, "counts": test_outcomes(tests_log)}
            write_json(state_path, state)

    csv_path = work / "benchmark" / "benchmark.csv"
    command = [
        sys.executable,
        "-m",
        "cifar_resnet.cli",
        "benchmark",
        *form.benchmark,
        "--out",
        str(csv_path.parent),
    ]
    command += ["--resume"] if csv_path.exists() else []
    until = min(started + (TEST_SHARE + BENCHMARK_SHARE) * budget, deadline)
    stages.append(run_stage("benchmark", command, REPOSITORY, work / "benchmark.log", until))
    benchmark = runner.read_results(csv_path) if csv_path.exists() else None

    for depth in form.depths:
        key = str(depth)
        if key not in state["durations"]:
            left = (deadline - time.monotonic()) / (len(form.depths) - form.depths.index(depth))
            state["durations"][key] = form.duration or job_duration(study_speed(benchmark, depth), left)
            write_json(state_path, state)
        stages.append(run_job(form, work, depth, state["durations"][key], deadline))

    return pack(out, work, form, device, stages, state, benchmark, time.monotonic() - started, budget)


def run_job(form: Form, work: Path, depth: int, iterations: int, deadline: float) -> Stage:
    """One training job of config/timing.yaml at ``depth`` through Snakemake, in ``work`` (resumed
    there by a later run: Snakemake skips what is done and the job continues from its resume state)."""
    config_link = work / "config"
    if not config_link.exists():
        config_link.symlink_to(REPOSITORY / "config")
    overrides = work / f"job{depth}.yaml"
    write_text(overrides, yaml.safe_dump(timing_overrides(form, depth, iterations)))
    target = run_file(TRAIN_RECORD, Run(DATASET, "paper", depth, 0))
    snakefile = REPOSITORY / "workflow" / "Snakefile"
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--nolock"]
    command += ["--cores", str(os.cpu_count() or 1), "--resources", "gpu=1", "--rerun-incomplete"]
    command += ["--configfile", "config/timing.yaml", overrides.name, "--", target]
    return run_stage(
        f"job ResNet-{depth}, {iterations:,} iterations", command, work, work / "jobs.log", deadline
    )


def pack(
    out: Path,
    work: Path,
    form: Form,
    device,
    stages: list[Stage],
    state: dict,
    benchmark,
    seconds: float,
    budget: float,
) -> Path:
    """Write OUT: the report, the benchmark's CSV and plot, the jobs' CSV and the logs' archive (the
    stages' logs, the jobs' logs, train.json and history.csv)."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = timings.run_files(work / RESULTS / DATASET, TRAIN_RECORD)
    jobs = timings.job_timings(summaries) if summaries else None
    lines = [
        "# GPU check",
        "",
        f"machine: {runner.describe_machine(device)}",
        f"form: {'small (CPU)' if form is SMALL else 'full'}; "
        f"this run took {seconds:.0f} s of a {budget:.0f} s budget",
        "",
        "## Stages of this run",
        "",
        tables.github_table(pd.DataFrame([vars(stage) for stage in stages]).round({"seconds": 1})),
        "",
        "## CUDA tests (pytest -m cuda)",
        "",
    ]
    lines += cuda_test_lines(state.get("tests"), work / "tests.log")
    lines += ["", "## Benchmark", "", *benchmark_lines(benchmark)]
    lines += ["", "## Training jobs (Snakemake, config/timing.yaml)", ""]
    lines += job_lines(jobs, state["durations"])
    if jobs is not None:
        write_csv(out / "jobs.csv", jobs)
    report = out / "gpu-check.md"
    write_text(report, "\n".join(lines) + "\n")
    for name in ("benchmark.csv", "benchmark.png"):
        if (work / "benchmark" / name).exists():
            with atomic_output(out / name) as temporary:
                shutil.copyfile(work / "benchmark" / name, temporary)
    archive_logs(out / "logs.tar.gz", work, summaries)
    return report


def benchmark_lines(benchmark) -> list[str]:
    """The report's lines on the benchmark: its tables, or that no row was measured."""
    if benchmark is None:
        return ["no row measured."]
    return [
        "Each figure is the median over interleaved rounds with its range; each ratio is taken "
        "within a round, between rows on equal cores (torch threads plus worker or job processes).",
        "",
        tables.markdown_table(benchmark),
        "",
        tables.ratio_table(benchmark),
        "",
        tables.sharing_table(benchmark),
    ]


def job_lines(jobs, durations: dict) -> list[str]:
    """The report's lines on the training jobs: their iterations, timings and verdicts on the targets."""
    planned = ", ".join(f"ResNet-{depth}: {iterations:,}" for depth, iterations in durations.items())
    lines = [f"iterations per job: {planned} (the paper's 64,000, or what the budget fitted)."]
    if jobs is None:
        return [*lines, "\nno job finished."]
    shown = jobs.assign(overhead_fraction=jobs["overhead_fraction"].map("{:.1%}".format))
    lines += ["", tables.github_table(shown.round(1))]
    verdicts = timings.target_verdicts(jobs)
    if not verdicts.empty:
        lines += ["", tables.github_table(verdicts)]
    return lines


def cuda_test_lines(tests: dict | None, log: Path) -> list[str]:
    """The report's lines on the CUDA tests: their outcome and counts, and each failed test."""
    if tests is None:
        return ["not finished within the budget: run the same command again."]
    counts = ", ".join(f"{count} {verdict}" for verdict, count in tests["counts"].items()) or "none ran"
    failed = re.findall(r"^(\S+::\S+) (?:FAILED|ERROR)", log.read_text(), re.M)
    return [f"{tests['outcome']}: {counts}.", *(f"- {name}" for name in dict.fromkeys(failed))]


def archive_logs(path: Path, work: Path, summaries: list[Path]) -> None:
    """The stages' and jobs' logs, the jobs' configs, and each job's train.json and history.csv."""
    with atomic_output(path) as temporary, tarfile.open(temporary, "w:gz") as archive:
        for log in [
            *work.glob("*.log"),
            *work.glob("job*.yaml"),
            *(work / LOGS.format(dataset=DATASET)).glob("**/*.log"),
        ]:
            archive.add(log, arcname=str(log.relative_to(work)))
        for summary in summaries:
            for name in (TRAIN_RECORD, HISTORY):
                archive.add(summary.with_name(name), arcname=str(summary.with_name(name).relative_to(work)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=GPU_CHECK)
    parser.add_argument("out", type=Path, help="folder for the report and its files")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check")
    parser.add_argument(
        "--work", type=Path, default=Path("results/gpu-check"), help="kept between runs: the resumable state"
    )
    parser.add_argument("--small", action="store_true", help="the tiny CPU form, in about a minute")
    args = parser.parse_args(argv)
    with exit_on_study_error():
        report = gpu_check(args.out, args.work, args.budget, args.small)
    print(report.read_text())
    print(f"wrote {report} and its files in {args.out}")


if __name__ == "__main__":
    main()
