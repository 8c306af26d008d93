"""One row per run of a dataset: summary.csv."""

from pathlib import Path

from cifar_resnet.files import write_csv
from cifar_resnet.summary import summarize_runs
from cifar_resnet.workflow import run_job


def summarize():
    run_dirs = [Path(path).parent for path in snakemake.input.evaluation]
    write_csv(snakemake.output[0], summarize_runs(run_dirs))


run_job(snakemake, summarize)
