"""Evaluate one run's selected model on the test set."""

import logging
from pathlib import Path

from cifar_resnet.devices import claim_gpu
from cifar_resnet.evaluate import evaluate_run
from cifar_resnet.workflow import run_job


def evaluate():
    with claim_gpu(Path(snakemake.params.gpu_slots), log=logging.getLogger("cifar_resnet").info):
        evaluate_run(
            Path(snakemake.input.summary),
            Path(snakemake.input.model),
            Path(snakemake.input.prepared),
            Path(snakemake.output[0]),
        )


run_job(snakemake, evaluate)
