"""K training processes sharing one device, as K Snakemake jobs do under $CIFAR_RESNET_JOBS_PER_GPU:
each builds its own trainer (seed + index) and runs the trainer's ``train.train_steps``. The processes
are spawned (CUDA cannot be used in a forked child), warm up on their own, then start every timed
repeat together at a barrier."""

from __future__ import annotations

import queue
import statistics
from dataclasses import replace

import torch

from cifar_resnet.benchmark.modes import Mode, packing_mode
from cifar_resnet.benchmark.pipelines import our_trainer, trainer_chunks
from cifar_resnet.benchmark.settings import Settings
from cifar_resnet.benchmark.timing import Measurement, Protocol, peak_memory_mb, timed_spans

Spans = list[tuple[float, float]]


def concurrent_jobs_throughput(
    depth: int,
    jobs: int,
    device: torch.device,
    protocol: Protocol,
    mode: Mode | None,
    data: dict,
    settings: Settings,
) -> Measurement:
    """Aggregate images/s of ``jobs`` training processes sharing ``device``, each training its own
    model on its own batches. A repeat's figure is all their images over the time from the first start
    to the last end, and the median over the repeats is reported. Peak memory is the sum of the
    processes' peaks."""
    mode = packing_mode(mode.name if mode else None, device)
    spans, peaks = run_concurrent_jobs(depth, jobs, device, protocol, mode, data, settings)
    images_per_repeat = jobs * protocol.steps * protocol.batch_size
    rates = [
        images_per_repeat / (max(end for _, end in repeat) - min(start for start, _ in repeat))
        for repeat in zip(*spans, strict=True)
    ]
    return Measurement(statistics.median(rates), sum(peaks), protocol.repeats)


def run_concurrent_jobs(
    depth: int,
    jobs: int,
    device: torch.device,
    protocol: Protocol,
    mode: Mode,
    data: dict,
    settings: Settings,
) -> tuple[list[Spans], list[float]]:
    """Run a trainer in each of ``jobs`` processes at once; returns each one's (start, end) per timed
    repeat, on the clock all processes share, and its peak memory. Raises RuntimeError when any
    process fails."""
    context = torch.multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    barrier, results = context.Barrier(jobs), context.Queue()
    shared = (depth, mode.name, str(device), protocol, data, settings, torch.get_num_threads())
    processes = [
        context.Process(target=timed_job, args=(index, *shared, barrier, results)) for index in range(jobs)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = collect(results, processes)
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    return [outcomes[index][0] for index in range(jobs)], [outcomes[index][1] for index in range(jobs)]


def collect(results, processes) -> dict[int, tuple[Spans, float]]:
    """Each process's spans and peak memory, by index, as they arrive; raises RuntimeError as soon as
    one reports an error or dies without a word."""
    outcomes = {}
    while len(outcomes) < len(processes):
        try:
            index, spans, peak, error = results.get(timeout=1.0)
        except queue.Empty:
            crashed = [process.exitcode for process in processes if process.exitcode not in (None, 0)]
            if crashed:
                raise RuntimeError(
                    f"a concurrent training process died with exit code {crashed[0]}"
                ) from None
            continue
        if error:
            raise RuntimeError(f"concurrent training process {index} of {len(processes)} failed: {error}")
        outcomes[index] = spans, peak
    return outcomes


def timed_job(
    index, depth, mode_name, device_name, protocol, data, settings, threads, barrier, results
) -> None:
    """One process of ``run_concurrent_jobs``: its own trainer, initialisation and data order (seed +
    index), as a training job builds it from its data on the CPU."""
    try:
        torch.set_num_threads(threads)
        device = torch.device(device_name)
        own = replace(protocol, seed=protocol.seed + index)
        trainer = our_trainer(depth, Mode.parse(mode_name), device, own, data, settings)
        spans = timed_spans(trainer_chunks([trainer], own), protocol, device, before_repeat=barrier.wait)
        results.put((index, spans, peak_memory_mb(device), None))
    except BaseException as error:  # report it: the parent would otherwise wait for this process
        barrier.abort()
        results.put((index, None, None, f"{type(error).__name__}: {error}"))
