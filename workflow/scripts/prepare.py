"""Verify an archive, parse it, split train/validation and write the dataset's prepared file."""

from pathlib import Path

from cifar_resnet import datasets, download, sources
from cifar_resnet.workflow import run_job


def prepare():
    source = sources.get_source(snakemake.wildcards.dataset)
    archive = Path(snakemake.input[0])
    if source.md5:
        download.verify_md5(archive, source.md5)
    datasets.prepare_dataset(
        archive,
        Path(snakemake.output[0]),
        source,
        validation_fraction=snakemake.params.validation_fraction,
        split_seed=snakemake.params.split_seed,
    )


run_job(snakemake, prepare)
