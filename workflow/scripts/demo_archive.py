"""Generate the embedded demo dataset as an archive in the CIFAR-10 binary format."""

from pathlib import Path

from cifar_resnet.demo import write_demo_archive
from cifar_resnet.workflow import run_job

run_job(
    snakemake,
    lambda: write_demo_archive(
        Path(snakemake.output[0]),
        seed=snakemake.params.seed,
        train_size=snakemake.params.train_size,
        test_size=snakemake.params.test_size,
    ),
)
