"""Export one run's selected model to ONNX, check it on the test split, quantise it to INT8 and time it
on the CPU: the run's deploy.json."""

from pathlib import Path

from cifar_resnet.deploy import deploy_run
from cifar_resnet.workflow import run_job


def deploy():
    int8 = snakemake.output.get("int8")
    deploy_run(
        Path(snakemake.input.summary),
        Path(snakemake.input.model),
        Path(snakemake.input.prepared),
        Path(snakemake.output.onnx),
        Path(int8) if int8 else None,
        Path(snakemake.output.report),
        snakemake.params.deploy,
        snakemake.threads,
    )


run_job(snakemake, deploy)
