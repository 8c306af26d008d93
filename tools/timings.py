"""``python -m tools.timings results/demo``: where a finished workflow's time went and how its jobs meet
the speed targets of docs/benchmark.md, read from the runs' ``train.json``, ``eval.json``
and ``deploy.json``. The benchmark times steps; these judge whole jobs (the paper's 64k
iterations, the job's overhead, the five depths together)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from cifar_resnet.benchmark.tables import github_table
from cifar_resnet.errors import StudyError, exit_on_study_error
from cifar_resnet.layout import DEPLOY_RECORD, EVAL_RECORD, TRAIN_RECORD, run_dirs
from cifar_resnet.records import read_deploy_record, read_eval_record, read_train_record
from cifar_resnet.timings import WORK_OF_JOB

TIMINGS = """Real training jobs against the speed targets of docs/benchmark.md, read from their
train.json: training time, that time scaled to the paper's 64k iterations, images/s, the job's time
from process start and its overhead, then a verdict per target."""
PAPER_ITERATIONS = 64_000
TIMED_FIELDS = (
    "dataset",
    "variant",
    "depth",
    "seed",
    "device",
    "iterations",
    "train_seconds",
    "images_per_s",
    "timings",
)
FIVE_DEPTHS = (20, 32, 44, 56, 110)
# The file each job type other than training records its timings in, and its reader.
TIMINGS_FILE = {
    "evaluation": (EVAL_RECORD, read_eval_record),
    "deployment": (DEPLOY_RECORD, read_deploy_record),
}
VERDICT_COLUMNS = ["dataset", "seed", "device", "target", "measured", "limit", "met"]


def run_files(dataset_results: Path, name: str) -> list[Path]:
    """The file ``name`` of every run under one ``results/{dataset}`` folder that has it."""
    return [run_dir / name for run_dir in run_dirs(dataset_results) if (run_dir / name).is_file()]


def summaries(paths: Sequence[Path]) -> list[Path]:
    """The ``train.json`` files named, and those of every run under each ``results/{dataset}`` folder
    named. Raises StudyError for a path that does not exist."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += run_files(path, TRAIN_RECORD)
        elif path.is_file():
            found.append(path)
        else:
            raise StudyError(f"{path} does not exist")
    return found


def job_files(paths: Sequence[Path]) -> dict[str, list[Path]]:
    """Per job type other than training, its timings files of every run under each ``results/{dataset}``
    folder named."""
    return {
        job: [found for path in map(Path, paths) if path.is_dir() for found in run_files(path, name)]
        for job, (name, _) in TIMINGS_FILE.items()
    }


def job_types(summaries: Sequence, other_jobs: dict[str, Sequence]) -> pd.DataFrame:
    """Per job type (training, then those of ``other_jobs``, {job type: timings files}): the number of
    jobs, their summed start-up, setup, first step (training only) and work (steady training steps,
    inference, or export, quantisation and timed runs) in seconds, the summed job time and the share of
    it spent outside work, and the median job's overhead fraction."""
    rows = []
    for path in summaries:
        times = read_train_record(path)["timings"]
        work = times["training_seconds"] - (times["first_step_seconds"] or 0.0)
        rows.append(job_row("training", times, times["first_step_seconds"], work))
    for job, files in other_jobs.items():
        for path in files:
            times = TIMINGS_FILE[job][1](path)["timings"]
            rows.append(job_row(job, times, 0.0, times[WORK_OF_JOB[job]]))
    if not rows:
        raise StudyError("no train.json or eval.json to read: run the workflow first.")
    jobs = pd.DataFrame(rows)
    table = jobs.groupby("job", sort=False).agg(
        jobs=("job", "size"),
        startup=("startup", "sum"),
        setup=("setup", "sum"),
        first_step=("first_step", "sum"),
        work=("work", "sum"),
        job_seconds=("job_seconds", "sum"),
        median_overhead=("overhead_fraction", "median"),
        started_at=("started_at", "min"),
        ended_at=("ended_at", "max"),
    )
    table.insert(6, "overhead", 1 - table["work"] / table["job_seconds"])
    return table.reset_index()


def job_row(job: str, times: dict, first_step: float | None, work: float) -> dict:
    return {
        "job": job,
        "startup": times["startup_seconds"] or 0.0,
        "setup": times["setup_seconds"],
        "first_step": first_step or 0.0,
        "work": work,
        "job_seconds": times["job_seconds"],
        "overhead_fraction": times["overhead_fraction"],
        "started_at": times["started_at"],
        "ended_at": times["started_at"] + times["job_seconds"],
    }


def workflow_wall_seconds(types: pd.DataFrame) -> float:
    """From the first job's process start to the last job's end (the report jobs record no times)."""
    return types["ended_at"].max() - types["started_at"].min()


def job_timings(summaries: Sequence) -> pd.DataFrame:
    """One row per training job from its ``train.json``: its training time, that time scaled to the
    paper's 64k iterations, its job time from process start and its overhead fraction."""
    rows = []
    for path in summaries:
        record = read_train_record(path)
        summary = {field: record[field] for field in TIMED_FIELDS}
        timings = summary.pop("timings")
        rows.append(
            {
                **summary,
                "seconds_per_64k": summary["train_seconds"] * PAPER_ITERATIONS / summary["iterations"],
                "job_seconds": timings["job_seconds"],
                "overhead_fraction": timings["overhead_fraction"],
            }
        )
    if not rows:
        raise StudyError("no train.json to read: train some runs first.")
    return pd.DataFrame(rows).sort_values(["dataset", "variant", "seed", "depth"], ignore_index=True)


def checks_of(by_depth: pd.DataFrame) -> list[tuple[str, float, float, str]]:
    """The targets that apply to one dataset, seed and device's full paper runs (indexed by depth), as
    (target, measured, limit, unit)."""
    checks = []
    if 20 in by_depth.index:
        checks.append(("ResNet-20 training", by_depth.loc[20, "train_seconds"], 90.0, "s"))
        checks.append(("ResNet-20 job overhead", 100 * by_depth.loc[20, "overhead_fraction"], 10.0, "%"))
    if 110 in by_depth.index:
        checks.append(("ResNet-110 training", by_depth.loc[110, "train_seconds"], 600.0, "s"))
    if set(FIVE_DEPTHS) <= set(by_depth.index):
        total = by_depth.loc[list(FIVE_DEPTHS), "job_seconds"].sum()
        checks.append(("the five depths' jobs together", total, 900.0, "s"))
    return checks


def target_verdicts(timings: pd.DataFrame) -> pd.DataFrame:
    """The per-job targets, judged on the ``paper`` runs of ``job_timings`` that trained the paper's
    full 64k iterations, for each dataset, seed and device: ResNet-20 in at most 90 s of training with
    at most 10 % overhead, ResNet-110 in at most 10 minutes, and the five depths' jobs in at most 15
    minutes together."""
    full = timings[(timings["variant"] == "paper") & (timings["iterations"] == PAPER_ITERATIONS)]
    verdicts = []
    for (dataset, seed, device), jobs in full.groupby(["dataset", "seed", "device"]):
        for target, measured, limit, unit in checks_of(jobs.set_index("depth")):
            verdicts.append(
                {
                    "dataset": dataset,
                    "seed": seed,
                    "device": device,
                    "target": target,
                    "measured": f"{measured:,.1f} {unit}",
                    "limit": f"{limit:,.0f} {unit}",
                    "met": "yes" if measured <= limit else "no",
                }
            )
    return pd.DataFrame(verdicts, columns=VERDICT_COLUMNS)


def number_table(frame: pd.DataFrame) -> str:
    return tabulate(frame, headers="keys", tablefmt="github", showindex=False, floatfmt=",.1f")


def print_job_types(types: pd.DataFrame) -> None:
    """Seconds summed per job type, and the workflow's wall time against its steady training."""
    shown = types.drop(columns=["started_at", "ended_at"]).assign(
        overhead=types["overhead"].map("{:.1%}".format),
        median_overhead=types["median_overhead"].map("{:.1%}".format),
    )
    print("\nwhere the jobs' time went (seconds, summed per job type; work: steady training or inference):\n")
    print(number_table(shown))
    wall, training = workflow_wall_seconds(types), types.set_index("job")["work"].get("training", 0.0)
    print(
        f"\nworkflow: {wall:,.1f} s from the first job's start to the last job's end, for {training:,.1f} s "
        f"of steady training summed over the training jobs ({wall / training:.2f}x)"
        if training
        else f"\nworkflow: {wall:,.1f} s from the first job's start to the last job's end"
    )


def print_timings(paths: Sequence[Path]) -> None:
    """Each training job's times, where each job type's time went, and a verdict per target."""
    found = summaries(paths)
    timings = job_timings(found)
    shown = timings.assign(overhead_fraction=timings["overhead_fraction"].map("{:.1%}".format))
    print(number_table(shown))
    print_job_types(job_types(found, job_files(paths)))
    verdicts = target_verdicts(timings)
    if verdicts.empty:
        print(
            "\nno target applies: they concern the paper variant's runs of the full 64k iterations "
            "(config/timing.yaml trains them on a CIFAR-sized demo dataset)"
        )
    else:
        print()
        print(github_table(verdicts))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.timings", description=TIMINGS)
    parser.add_argument("paths", nargs="+", type=Path, help="results/{dataset} folders or train.json files")
    args = parser.parse_args(argv)
    with exit_on_study_error():
        print_timings(args.paths)


if __name__ == "__main__":
    main()
