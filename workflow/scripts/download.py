"""Fetch an official archive (or copy the local one named in data.archives), verified by its md5."""

from pathlib import Path

from cifar_resnet import download, sources
from cifar_resnet.workflow import run_job


def fetch():
    source = sources.get_source(snakemake.wildcards.dataset)
    destination = Path(snakemake.output[0])
    if snakemake.params.local_copy:
        download.copy_verified(Path(snakemake.params.local_copy), destination, source.md5)
    else:
        download.download(source.url, destination, source.md5)


run_job(snakemake, fetch)
