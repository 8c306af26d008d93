"""Splice the variant table and the real datasets' results (tables with links to plots) into README.md."""

from pathlib import Path

from cifar_resnet import report
from cifar_resnet.files import write_text
from cifar_resnet.workflow import run_job


def readme():
    readme = Path(snakemake.params.readme)
    variants = report.variant_table(snakemake.params.variants)
    report.splice_readme(readme, variants, "<!-- variants:start -->", "<!-- variants:end -->")
    block = report.results_block(snakemake.params.datasets, [Path(p) for p in snakemake.input.tables])
    report.splice_readme(readme, block)
    write_text(snakemake.output[0], block)


run_job(snakemake, readme)
