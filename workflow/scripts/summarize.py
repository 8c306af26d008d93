"""One row per run of a dataset: summary.csv, with the deployment columns when the rule gives each run's
deploy.json."""

from pathlib import Path

from cifar_resnet.summary import summarize_runs, write_summary
from cifar_resnet.workflow import run_job


def summarize():
    run_dirs = [Path(path).parent for path in snakemake.input.evaluation]
    write_summary(snakemake.output[0], summarize_runs(run_dirs, deployed=bool(snakemake.input.deploy)))


run_job(snakemake, summarize)
