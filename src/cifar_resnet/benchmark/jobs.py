"""K training processes sharing one device, as K Snakemake jobs do under $CIFAR_RESNET_JOBS_PER_GPU:
each builds its own trainer (seed + index) and runs the trainer's ``train.train_steps``. The processes
are spawned (CUDA cannot be used in a forked child) and stay up for the whole group of rows: each
``run(steps)`` asks every one for that many steps, which they start together at a barrier, so that the
jobs row takes its turn in the rounds like any other."""

from __future__ import annotations

import queue
import time
from dataclasses import replace

import torch

from cifar_resnet.benchmark.modes import Mode, packing_mode
from cifar_resnet.benchmark.pipelines import our_trainer, trainer_steps
from cifar_resnet.benchmark.settings import Settings
from cifar_resnet.benchmark.timing import Pipeline, Protocol, Span, peak_memory_mb
from cifar_resnet.runtime import synchronize

READY = "ready"


def jobs_pipeline(
    depth: int,
    jobs: int,
    device: torch.device,
    protocol: Protocol,
    mode: Mode | None,
    data: dict,
    settings: Settings,
    threads: int,
) -> Pipeline:
    """``jobs`` training processes on ``threads`` torch threads each, sharing ``device``, each training
    its own model on its own batches. A repeat's span runs from the first start to the last end, on the
    monotonic clock they share; peak memory is the sum of the processes' peaks."""
    mode = packing_mode(mode.name if mode else None, device)
    context = torch.multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    barrier, results = context.Barrier(jobs), context.Queue()
    orders = [context.SimpleQueue() for _ in range(jobs)]
    shared = (depth, mode.name, str(device), protocol, data, settings, threads, barrier, results)
    processes = [
        context.Process(target=job_server, args=(index, *shared, orders[index])) for index in range(jobs)
    ]
    for process in processes:
        process.start()
    peaks = [float("nan")] * jobs

    def run(steps: int) -> Span:
        for order in orders:
            order.put(steps)
        outcomes = collect(results, processes)
        peaks[:] = [outcomes[index][1] for index in range(jobs)]
        return min(start for (start, _), _ in outcomes.values()), max(
            end for (_, end), _ in outcomes.values()
        )

    def close() -> None:
        for order in orders:
            order.put(None)
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()

    try:
        collect(results, processes)  # every process has built its trainer
        # this process only waits for the jobs
        return Pipeline(
            run, jobs * protocol.batch_size, device, 1, close=close, own_peak_mb=lambda: sum(peaks)
        )
    except BaseException:
        close()
        raise


def collect(results, processes) -> dict[int, tuple]:
    """Each process's report, by index, as they arrive; raises RuntimeError as soon as one reports an
    error or dies without a word."""
    outcomes = {}
    while len(outcomes) < len(processes):
        try:
            index, report, error = results.get(timeout=1.0)
        except queue.Empty:
            crashed = [process.exitcode for process in processes if process.exitcode not in (None, 0)]
            if crashed:
                raise RuntimeError(
                    f"a concurrent training process died with exit code {crashed[0]}"
                ) from None
            continue
        if error:
            raise RuntimeError(f"concurrent training process {index} of {len(processes)} failed: {error}")
        outcomes[index] = report
    return outcomes


def job_server(
    index, depth, mode_name, device_name, protocol, data, settings, threads, barrier, results, orders
) -> None:
    """One process of ``jobs_pipeline``: its own trainer, initialisation and data order (seed + index),
    as a training job builds it from its data on the CPU; then, for each order of steps until None,
    those steps from a barrier, reporting their span and the process's peak memory."""
    try:
        torch.set_num_threads(threads)
        device = torch.device(device_name)
        trainer = our_trainer(
            depth,
            Mode.parse(mode_name),
            device,
            replace(protocol, seed=protocol.seed + index),
            data,
            settings,
        )
        run = trainer_steps([trainer])
        results.put((index, READY, None))
        while (steps := orders.get()) is not None:
            barrier.wait()
            synchronize(device)
            started = time.perf_counter()
            run(steps)
            synchronize(device)
            results.put((index, ((started, time.perf_counter()), peak_memory_mb(device)), None))
    except BaseException as error:  # report it: the parent would otherwise wait for this process
        barrier.abort()
        results.put((index, None, f"{type(error).__name__}: {error}"))
