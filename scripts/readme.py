"""Splice the real datasets' accuracy tables, with links to their plots, into README.md."""

from pathlib import Path

from cifar_resnet import report
from cifar_resnet.io import write_text
from cifar_resnet.workflow import run_job


def readme():
    block = report.results_block(snakemake.params.datasets, [Path(p) for p in snakemake.input.tables])
    report.splice_readme(Path(snakemake.params.readme), block)
    write_text(snakemake.output[0], block)


run_job(snakemake, readme)
