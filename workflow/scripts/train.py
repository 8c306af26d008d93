"""Train one run on a GPU slot of its own (or the CPU), resuming from its last saved epoch, then evaluate
its selected model on the test set."""

import logging
from pathlib import Path

from cifar_resnet.devices import claim_gpu
from cifar_resnet.run import CHECKPOINT_INTERVAL_SECONDS, Outputs, train_job
from cifar_resnet.runtime import share_compiled_code
from cifar_resnet.workflow import run_job, whole_number_from_environment


def checkpoint_interval(default: float) -> float:
    seconds = whole_number_from_environment("CIFAR_RESNET_CHECKPOINT_SECONDS", "seconds", "600", minimum=0)
    return default if seconds is None else seconds


def train():
    for derived in snakemake.params.derived:  # made from the model Snakemake removed
        Path(derived).unlink(missing_ok=True)
    share_compiled_code(Path(snakemake.params.compile_cache))
    with claim_gpu(Path(snakemake.params.gpu_slots), log=logging.getLogger("cifar_resnet").info):
        train_job(
            snakemake.params.run_config,
            Path(snakemake.input.prepared),
            Outputs(
                model=Path(snakemake.output.model),
                history=Path(snakemake.output.history),
                summary=Path(snakemake.output.summary),
                evaluation=Path(snakemake.output.evaluation),
            ),
            resume_file=Path(snakemake.params.resume),
            pretrained=Path(snakemake.input.pretrained[0]) if snakemake.input.pretrained else None,
            checkpoint_interval=checkpoint_interval(CHECKPOINT_INTERVAL_SECONDS),
            curves=Path(snakemake.params.tensorboard),
        )


run_job(snakemake, train, resumable=True)
