"""Export one run's selected model to ONNX, check it on the test split and quantise it to INT8."""

from pathlib import Path

from cifar_resnet.export import export_run
from cifar_resnet.workflow import run_job


def export():
    int8 = snakemake.output.get("int8")
    export_run(
        Path(snakemake.input.summary),
        Path(snakemake.input.model),
        Path(snakemake.input.prepared),
        Path(snakemake.output.onnx),
        Path(int8) if int8 else None,
        Path(snakemake.output.report),
        snakemake.params.deploy,
    )


run_job(snakemake, export)
