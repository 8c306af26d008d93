"""Real training jobs against the speed targets of docs/benchmark.md, read from their ``train.json``:
the whole-job verdicts that ``cifar-resnet timings`` prints. The benchmark times steps; these judge
whole trainings (the paper's 64k iterations, the job's overhead, the five depths together)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cifar_resnet.errors import StudyError
from cifar_resnet.summary import read_fields

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
VERDICT_COLUMNS = ["dataset", "seed", "device", "target", "measured", "limit", "met"]


def summaries(paths: Sequence[Path]) -> list[Path]:
    """The ``train.json`` files named, and those of every run under each ``results/{dataset}`` folder
    named. Raises StudyError for a path that does not exist."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(path.glob("runs/*/resnet*/seed*/train.json"))
        elif path.is_file():
            found.append(path)
        else:
            raise StudyError(f"{path} does not exist")
    return found


def job_timings(summaries: Sequence) -> pd.DataFrame:
    """One row per training job from its ``train.json``: its training time, that time scaled to the
    paper's 64k iterations, its job time from process start and its overhead fraction."""
    rows = []
    for path in summaries:
        summary = read_fields(Path(path), TIMED_FIELDS)
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
