"""Time one run's ONNX models and its PyTorch model on the CPU, and write its deploy.json."""

from pathlib import Path

from cifar_resnet.latency import latency_run
from cifar_resnet.workflow import run_job


def latency():
    int8 = snakemake.input.get("int8")
    latency_run(
        Path(snakemake.input.summary),
        Path(snakemake.input.model),
        Path(snakemake.input.prepared),
        Path(snakemake.input.onnx),
        Path(int8) if int8 else None,
        Path(snakemake.input.export),
        Path(snakemake.output[0]),
        snakemake.params.latency,
        snakemake.threads,
    )


run_job(snakemake, latency)
