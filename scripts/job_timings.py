"""Real training jobs against the speed targets of docs/benchmark.md, read from their train.json:
training time, that time scaled to the paper's 64k iterations, images/s, the job's time from process
start and its overhead, then a verdict per target.

    python scripts/job_timings.py results/demo       # every run under results/demo/runs
    python scripts/job_timings.py results/cifar10/runs/paper/resnet20/seed0/train.json

A plain command, not a Snakemake script; see docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tabulate import tabulate

from cifar_resnet import benchmark
from cifar_resnet.errors import StudyError


def summaries(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(path.glob("runs/*/resnet*/seed*/train.json"))
        elif path.is_file():
            found.append(path)
        else:
            sys.exit(f"error: {path} does not exist")
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", type=Path, help="results/{dataset} folders or train.json files")
    args = parser.parse_args(argv)
    try:
        timings = benchmark.job_timings(summaries(args.paths))
    except StudyError as error:
        sys.exit(f"error: {error}")
    shown = timings.assign(overhead_fraction=timings["overhead_fraction"].map("{:.1%}".format))
    print(tabulate(shown, headers="keys", tablefmt="github", showindex=False, floatfmt=",.1f"))
    verdicts = benchmark.target_verdicts(timings)
    if verdicts.empty:
        print(
            "\nno target applies: they concern the paper variant's runs of the full 64k iterations "
            "(config/timing.yaml trains them on a CIFAR-sized demo dataset)"
        )
    else:
        print()
        print(tabulate(verdicts, headers="keys", tablefmt="github", showindex=False, disable_numparse=True))


if __name__ == "__main__":
    main()
