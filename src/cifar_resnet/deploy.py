"""Deployment of a run's selected model, as one job: the ONNX export with its normalisation folded in,
checked against PyTorch on the test split; where configured, its INT8 version calibrated on training
images; then the CPU latency of each beside PyTorch eager, the files' sizes and the machine, all in
the run's ``deploy.json``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from cifar_resnet import datasets
from cifar_resnet.config import check_latency_batch
from cifar_resnet.export import export_checked
from cifar_resnet.latency import measure_latency
from cifar_resnet.provenance import cpu_model
from cifar_resnet.quantize import quantize_and_measure
from cifar_resnet.records import DEPLOY_RECORD_FIELDS, write_record
from cifar_resnet.timings import process_age, work_timings
from cifar_resnet.trained import deployed_model, trained_checkpoint

log = logging.getLogger(__name__)

# The exporter's and the quantiser's passes log each rewrite at INFO; the job's log keeps its own lines.
TOOL_LOGGERS = ("onnx_ir", "onnxscript", "onnxruntime")


def deploy_run(
    train_summary: Path,
    model_path: Path,
    prepared: Path,
    onnx_path: Path,
    int8_path: Path | None,
    output: Path,
    deploy: dict,
    threads: int,
) -> dict:
    """Export a run's model, check it on the test split, quantise it when ``int8_path`` is given, time
    the models (the batch on ``threads`` threads) and write what was measured to ``output``."""
    started, startup = time.perf_counter(), process_age()
    for name in TOOL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    data = datasets.load_prepared(prepared, splits=("train", "test") if int8_path else ("test",))
    latency = deploy["latency"]
    check_latency_batch(latency["batch_size"], len(data["test_images"]), f"the test split of {prepared}")
    checkpoint = trained_checkpoint(train_summary, model_path)
    model = deployed_model(checkpoint, str(model_path), Path(train_summary).name)
    working = time.perf_counter()
    record, logits = export_checked(model, onnx_path, data, deploy["tolerance"])
    log.info(
        "ONNX (opset %d) agrees with PyTorch on %.2f%% of %d test images, largest logit difference %.2g",
        record["opset"],
        100 * record["onnx_top1_agreement"],
        record["num_test_images"],
        record["onnx_max_logit_difference"],
    )
    record |= {"int8_test_error": None, "int8_error_difference": None}
    if int8_path:
        calibration = deploy["calibration_images"]
        record |= int8_measured(onnx_path, int8_path, data, logits, calibration, record["onnx_test_error"])
    record |= measure_latency(model, onnx_path, int8_path, data["test_images"], latency, threads)
    ended = time.perf_counter()
    record |= how_measured(onnx_path, int8_path, latency, threads)
    record["timings"] = work_timings(
        "deployment", startup, working - started, ended - working, ended - started
    )
    write_record(output, record, DEPLOY_RECORD_FIELDS)
    log.info(
        "batch 1, 1 thread: onnxruntime %.3f ms, INT8 %s, PyTorch eager %.3f ms (%s)",
        record["onnx_b1_ms"],
        f"{record['int8_b1_ms']:.3f} ms" if int8_path else "not built",
        record["eager_b1_ms"],
        record["cpu"],
    )
    return record


def int8_measured(
    onnx_path, int8_path, data: dict, float_logits, calibration_images: int, float_error: float
) -> dict:
    """The INT8 model quantised and measured, with its test error's difference to the float model's."""
    measured = quantize_and_measure(onnx_path, int8_path, data, float_logits, calibration_images)
    measured["int8_error_difference"] = measured["int8_test_error"] - float_error
    log.info(
        "INT8 test error %.2f%% (float %.2f%%), calibrated on %d training images",
        measured["int8_test_error"],
        float_error,
        calibration_images,
    )
    return measured


def how_measured(onnx_path: Path, int8_path: Path | None, latency: dict, threads: int) -> dict:
    """The models' sizes, the latency settings and the machine and libraries they were timed with."""
    import onnxruntime

    return {
        "onnx_bytes": onnx_path.stat().st_size,
        "int8_bytes": int8_path.stat().st_size if int8_path else None,
        "latency_batch_size": latency["batch_size"],
        "latency_threads": threads,
        "runs": latency["runs"],
        "warmup_runs": latency["warmup_runs"],
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "onnxruntime_version": onnxruntime.__version__,
        "torch_version": torch.__version__,
    }
