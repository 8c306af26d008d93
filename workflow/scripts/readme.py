"""Splice the variant table and the real datasets' results (tables with links to plots) into README.md."""

import os
from pathlib import Path

from cifar_resnet.files import write_text
from cifar_resnet.readme import RESULTS_MARKERS, VARIANTS_MARKERS, results_block, update_readme, variant_table
from cifar_resnet.workflow import run_job


def readme():
    readme = Path(snakemake.params.readme)
    variants = variant_table(snakemake.params.variants)
    plots = [
        {name: os.path.relpath(path, readme.parent) for name, path in paths.items()}
        for paths in snakemake.params.plots
    ]
    block = results_block(snakemake.params.datasets, [Path(p) for p in snakemake.input.tables], plots)
    update_readme(readme, {VARIANTS_MARKERS: variants, RESULTS_MARKERS: block})
    write_text(snakemake.output[0], block)


run_job(snakemake, readme)
