"""One row per run of a dataset: summary.csv."""

from pathlib import Path

from cifar_resnet import report
from cifar_resnet.workflow import run_job


def summarize():
    run_dirs = [Path(path).parent for path in snakemake.input.evaluation]
    report.write_csv(report.summarize_runs(run_dirs), snakemake.output[0])


run_job(snakemake, summarize)
