"""CPU latency of a run's exported models, beside PyTorch eager.

Two settings: batch 1 on one intra-op thread, a proxy for one phone core, and a larger batch on
several threads. Each engine runs ``warmup_runs`` untimed calls first (allocations, onnxruntime's
kernel selection), then ``runs`` timed ones; the median and the 90th percentile are reported. The
deployment job holds every thread it times with, so no other job of the workflow runs beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cifar_resnet.export import INPUT_NAME, OUTPUT_NAME, onnx_session


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


def measure_latency(
    model: torch.nn.Module,
    onnx_path: Path,
    int8_path: Path | None,
    images: torch.Tensor,
    latency: dict,
    threads: int,
) -> dict:
    """Median and 90th-percentile milliseconds of the ONNX models (float and, when given, INT8) and the
    PyTorch ``model`` at batch 1 on one thread and on a batch of ``latency["batch_size"]`` of ``images``
    on ``threads`` threads, as ``{engine}_{b1|batch}_ms`` and ``..._p90_ms``."""
    settings = {"b1": (images[:1], 1), "batch": (images[: latency["batch_size"]], threads)}
    timing = {"runs": latency["runs"], "warmup_runs": latency["warmup_runs"]}
    record = {}
    for setting, (batch, setting_threads) in settings.items():
        measured = {
            "onnx": onnx_latency(onnx_path, batch.numpy(), setting_threads, **timing),
            "int8": onnx_latency(int8_path, batch.numpy(), setting_threads, **timing) if int8_path else {},
            "eager": eager_latency(model, batch, setting_threads, **timing),
        }
        for engine, figures in measured.items():
            record[f"{engine}_{setting}_ms"] = figures.get("median_ms")
            record[f"{engine}_{setting}_p90_ms"] = figures.get("p90_ms")
    return record
