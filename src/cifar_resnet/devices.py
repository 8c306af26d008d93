"""Give each concurrently running training job a GPU of its own, or a share of one.

Snakemake counts the ``gpu`` resource but never says which device a job should use (it does not set
CUDA_VISIBLE_DEVICES), so on a multi-GPU machine every job would train on GPU 0. ``claim_gpu`` turns
the GPUs into a pool of slots, one lock file per slot: one slot per device, or
$CIFAR_RESNET_JOBS_PER_GPU slots per device so that several small trainings share one GPU. The locks
are ``flock`` locks because the kernel drops them when their holder dies, even of SIGKILL, so a
crashed job never keeps a slot.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import takewhile
from pathlib import Path
from typing import IO

from cifar_resnet.errors import StudyError
from cifar_resnet.workflow import whole_number_from_environment

VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
GPU_COUNT_VARIABLE = "CIFAR_RESNET_GPU_COUNT"
JOBS_PER_GPU_VARIABLE = "CIFAR_RESNET_JOBS_PER_GPU"
SLURM_GPU_VARIABLES = (VISIBLE_DEVICES, "SLURM_STEP_GPUS", "SLURM_JOB_GPUS")
POLL_SECONDS = 0.2
NVIDIA_DRIVER_GPUS = Path("/proc/driver/nvidia/gpus")


@contextmanager
def claim_gpu(
    lock_dir: Path,
    device_count: int | None = None,
    log: Callable[[str], None] = print,
    *,
    timeout: float = 120.0,
) -> Iterator[str | None]:
    """Hold a slot of one GPU for the duration of the block and yield the GPU's id, or None to train
    on the CPU.

    Under SLURM with GPUs assigned, claims nothing and yields SLURM's assignment. Otherwise the pool is
    the CUDA_VISIBLE_DEVICES list the run was started with, or else ``range(device_count)``, where
    ``device_count`` defaults to $CIFAR_RESNET_GPU_COUNT or else ``nvidia_gpu_count()``. Each
    GPU has $CIFAR_RESNET_JOBS_PER_GPU slots (1 when unset), filled one round
    over all GPUs at a time, so jobs spread over the GPUs before they share one. The claimed id is
    CUDA_VISIBLE_DEVICES inside the block, so the job's GPU is always ``cuda:0``; enter the block
    before anything initialises CUDA, which reads the variable only once. Waits up to ``timeout``
    seconds for a free slot, then raises StudyError.
    """
    slurm_gpus = _slurm_assigned_gpus()
    if slurm_gpus is not None:
        log(f"using the GPUs SLURM assigned: {slurm_gpus}")
        yield slurm_gpus
        return
    pool, source = _device_pool(device_count)
    if not pool:
        log(f"no GPU visible ({source}): training on the CPU")
        yield None
        return
    slots = whole_number_from_environment(JOBS_PER_GPU_VARIABLE, "training jobs per GPU", "4", minimum=1) or 1
    device, slot, lock = _wait_for_free_slot(Path(lock_dir), pool, slots, timeout)
    previous = os.environ.get(VISIBLE_DEVICES)
    try:
        os.environ[VISIBLE_DEVICES] = device
        sharing = f", job slot {slot + 1} of {slots} on it" if slots > 1 else ""
        log(f"using GPU {pool.index(device)} of {len(pool)}{sharing} ({VISIBLE_DEVICES}={device}; {source})")
        yield device
    finally:
        _restore_visible_devices(previous)
        # Forked children (DataLoader workers) share this open file: closing it alone would leave
        # the slot locked until they exit.
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _slurm_assigned_gpus() -> str | None:
    if "SLURM_JOB_ID" not in os.environ:
        return None
    return next((os.environ[name] for name in SLURM_GPU_VARIABLES if os.environ.get(name)), None)


def _device_pool(device_count: int | None) -> tuple[list[str], str]:
    """The devices to choose from, and where that list came from."""
    visible = os.environ.get(VISIBLE_DEVICES)
    if visible is not None:
        entries = [entry.strip() for entry in visible.split(",")]
        # CUDA ignores everything from the first invalid entry on: "" or "-1" hides every GPU.
        usable = list(takewhile(lambda entry: entry and not entry.startswith("-"), entries))
        return usable, f"pool {VISIBLE_DEVICES}={visible} set before the run"
    if device_count is not None:
        return [str(index) for index in range(device_count)], f"{device_count} GPUs as the caller said"
    count = whole_number_from_environment(GPU_COUNT_VARIABLE, "GPUs", "2", minimum=0)
    if count is not None:
        return [str(index) for index in range(count)], f"{GPU_COUNT_VARIABLE}={count}"
    count, source = nvidia_gpu_count()
    return [str(index) for index in range(count)], f"{count} GPUs {source}"


def nvidia_gpu_count() -> tuple[int, str]:
    """The NVIDIA GPUs this machine has, and how they were counted, without importing torch: asking
    CUDA would initialise it, and CUDA then ignores the CUDA_VISIBLE_DEVICES set afterwards. The
    driver's ``nvidia-smi -L`` lists what this container may use; without it, the driver's folder
    per GPU; without a driver, none."""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60, check=True)
        except (OSError, subprocess.SubprocessError) as error:
            raise StudyError(
                f"nvidia-smi -L failed ({error}), so the GPUs cannot be counted; set "
                f"{GPU_COUNT_VARIABLE} to their number."
            ) from None
        return sum(line.startswith("GPU ") for line in listing.stdout.splitlines()), "listed by nvidia-smi"
    if NVIDIA_DRIVER_GPUS.is_dir():
        return sum(entry.is_dir() for entry in NVIDIA_DRIVER_GPUS.iterdir()), f"in {NVIDIA_DRIVER_GPUS}"
    return 0, "(no NVIDIA driver)"


def _wait_for_free_slot(
    lock_dir: Path, pool: list[str], slots: int, timeout: float
) -> tuple[str, int, IO[str]]:
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        for slot in range(slots):
            for device in pool:
                lock = _try_lock(lock_dir / f"gpu{_file_name_safe(device)}.slot{slot}.lock")
                if lock is not None:
                    return device, slot, lock
        if time.monotonic() >= deadline:
            raise StudyError(
                f"No GPU slot became free within {timeout:.0f} s: all {slots} slots of each of "
                f"{', '.join(pool)} stay claimed by other processes (their ids are in {lock_dir}/gpu*.lock); "
                f"run snakemake with --resources gpu=N for N no larger than the number of GPUs times "
                f"{JOBS_PER_GPU_VARIABLE} ({slots}), or stop those processes."
            )
        time.sleep(POLL_SECONDS)


def _try_lock(path: Path) -> IO[str] | None:
    lock = open(path, "a+")  # noqa: SIM115 - the caller holds it open as long as it holds the GPU
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _file_name_safe(device: str) -> str:
    # Device ids may be UUIDs, and old-style MIG ids contain slashes.
    return re.sub(r"[^A-Za-z0-9_.-]", "_", device)


def _restore_visible_devices(previous: str | None) -> None:
    if previous is None:
        os.environ.pop(VISIBLE_DEVICES, None)
    else:
        os.environ[VISIBLE_DEVICES] = previous
