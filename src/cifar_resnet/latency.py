"""Deployment, third stage: CPU latency and size of a run's exported models, beside PyTorch eager.

Two settings: batch 1 on one intra-op thread, a proxy for one phone core, and a larger batch on
several threads. Each engine runs ``warmup_runs`` untimed calls first (allocations, onnxruntime's
kernel selection), then ``runs`` timed ones; the median and the 90th percentile are reported. The
job holds every thread it times with, so no other job of the workflow runs beside it.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cifar_resnet import datasets
from cifar_resnet.errors import StudyError
from cifar_resnet.export import INPUT_NAME, OUTPUT_NAME, deployed_model, onnx_session
from cifar_resnet.files import check_json, write_json
from cifar_resnet.timings import process_age, work_timings

log = logging.getLogger(__name__)

# What deploy.json copies from the export's report, for the summary.
EXPORT_FIELDS = ("onnx_top1_agreement", "onnx_max_logit_difference", "onnx_test_error")
INT8_FIELDS = ("int8_test_error", "int8_error_difference")


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_calls(call: Callable[[], object], runs: int, warmup_runs: int) -> dict:
    """Median and 90th percentile, in milliseconds, of ``runs`` calls after ``warmup_runs``."""
    for _ in range(warmup_runs):
        call()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return {
        "median_ms": 1000 * float(np.median(seconds)),
        "p90_ms": 1000 * float(np.percentile(seconds, 90)),
    }


def onnx_latency(path: Path, images: np.ndarray, threads: int, runs: int, warmup_runs: int) -> dict:
    session = onnx_session(path, threads)
    return time_calls(lambda: session.run([OUTPUT_NAME], {INPUT_NAME: images}), runs, warmup_runs)


def eager_latency(
    model: torch.nn.Module, images: torch.Tensor, threads: int, runs: int, warmup_runs: int
) -> dict:
    torch.set_num_threads(threads)

    @torch.inference_mode()
    def forward():
        return model(images)

    return time_calls(forward, runs, warmup_runs)


def latency_run(
    train_summary: Path,
    model_path: Path,
    prepared: Path,
    onnx_path: Path,
    int8_path: Path | None,
    export_report: Path,
    output: Path,
    latency: dict,
    threads: int,
) -> dict:
    """Time the run's ONNX models (float and, when given, INT8) and its PyTorch model on test images, and
    write deploy.json: the export's checks, the latencies, the sizes and the machine they were measured on."""
    started, startup = time.perf_counter(), process_age()
    exported = check_json(export_report, EXPORT_FIELDS + (INT8_FIELDS if int8_path else ()))
    data = datasets.load_prepared(prepared, splits=("test",))
    if len(data["test_images"]) < latency["batch_size"]:
        raise StudyError(
            f"deploy.latency.batch_size is {latency['batch_size']}, more than the {len(data['test_images'])} "
            f"test images of {prepared}; choose a smaller batch."
        )
    model = deployed_model(train_summary, model_path, data)
    settings = {
        "b1": (data["test_images"][:1], 1),
        "batch": (data["test_images"][: latency["batch_size"]], threads),
    }
    timing = {"runs": latency["runs"], "warmup_runs": latency["warmup_runs"]}
    record = {field: exported.get(field) for field in EXPORT_FIELDS + INT8_FIELDS}
    timed = time.perf_counter()
    for setting, (images, setting_threads) in settings.items():
        measured = {
            "onnx": onnx_latency(onnx_path, images.numpy(), setting_threads, **timing),
            "int8": onnx_latency(int8_path, images.numpy(), setting_threads, **timing) if int8_path else {},
            "eager": eager_latency(model, images, setting_threads, **timing),
        }
        for engine, figures in measured.items():
            record[f"{engine}_{setting}_ms"] = figures.get("median_ms")
            record[f"{engine}_{setting}_p90_ms"] = figures.get("p90_ms")
    ended = time.perf_counter()
    record |= {
        "onnx_bytes": onnx_path.stat().st_size,
        "int8_bytes": int8_path.stat().st_size if int8_path else None,
        "latency_batch_size": latency["batch_size"],
        "latency_threads": threads,
        **timing,
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "onnxruntime_version": onnxruntime_version(),
        "torch_version": torch.__version__,
        "input": exported.get("input"),
        "timings": work_timings("latency", startup, timed - started, ended - timed, ended - started),
    }
    write_json(output, record)
    log.info(
        "batch 1, 1 thread: onnxruntime %.3f ms, INT8 %s, PyTorch eager %.3f ms (%s)",
        record["onnx_b1_ms"],
        f"{record['int8_b1_ms']:.3f} ms" if int8_path else "not built",
        record["eager_b1_ms"],
        record["cpu"],
    )
    return record


def onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
