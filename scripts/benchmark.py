"""Training speed of the CIFAR ResNets on this machine: our trainer's step in each mode, the classical
DataLoader pipeline, and K models per device (packed into one step, one after the other, or in K
processes at once), as images/s, seconds per 45k-image epoch and peak device memory. Writes
OUT/benchmark.csv and OUT/benchmark.png, and prints the tables.

    python scripts/benchmark.py --depths 20 56 110 --steps 50 --repeats 5 --out results/benchmark
    python scripts/benchmark.py --small     # CI smoke run: under a minute on 2 CPU cores

A plain command, not a Snakemake script; see docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from cifar_resnet import benchmark
from cifar_resnet.errors import StudyError
from cifar_resnet.files import write_csv

# Figures from a --small run only show that everything runs; its batch sizes are not the recipe's.
SMALL = {
    "depths": [20],
    "steps": 2,
    "warmup": 1,
    "repeats": 2,
    "workers": 2,
    "batch_size": 16,
    "packed": [2],
    "packed_batch_size": 8,
    "dataset_size": 1024,
    "threads": 1,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 32, 44, 56, 110])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=list(benchmark.DEFAULT_MODES),
        help="our step's modes: eager or compile, +bf16, +channels_last, +cuda_graphs; 'all' for all",
    )
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before the repeats")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
    parser.add_argument("--batch-size", type=int, default=benchmark.BATCH_SIZE)
    parser.add_argument(
        "--workers", type=int, default=benchmark.default_workers(), help="classical DataLoader workers"
    )
    parser.add_argument(
        "--packed",
        type=int,
        nargs="*",
        default=[1, 4, 8],
        metavar="K",
        help="models per device (packed, sequential, jobs)",
    )
    parser.add_argument(
        "--packed-batch-size", type=int, help="images per model and packed step (--batch-size)"
    )
    parser.add_argument(
        "--packed-mode",
        help="mode of the K-model rows: eager or compile, +bf16 (default: bf16 on CUDA, fp32 on the CPU)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--compile-on-cpu", action="store_true", help="run compile modes on the CPU too (slow)"
    )
    parser.add_argument("--dataset-size", type=int, default=benchmark.EPOCH_IMAGES, help="synthetic images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, help="torch's CPU threads (default: its choice); 1 is steadier on shared cores"
    )
    parser.add_argument("--out", type=Path, default=Path("results/benchmark"))
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run of the same command: keep the rows OUT/benchmark.csv already has",
    )
    parser.add_argument("--small", action="store_true", help=f"CI smoke run; sets {SMALL} unless given")
    if parser.parse_known_args(argv)[0].small:
        parser.set_defaults(**SMALL)
    args = parser.parse_args(argv)
    if args.modes == ["all"]:
        args.modes = list(benchmark.ALL_MODES)
    try:
        for name in args.modes:
            benchmark.Mode.parse(name)
        benchmark.packing_mode(args.packed_mode, torch.device("cpu"))
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(message)s")
    logging.getLogger("cifar_resnet").setLevel(logging.INFO)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    csv_path, plot_path = args.out / "benchmark.csv", args.out / "benchmark.png"
    try:
        device = benchmark.resolve_device(args.device)
        earlier = benchmark.read_results(csv_path) if args.resume and csv_path.exists() else None
        frame = benchmark.run_benchmark(
            args.depths,
            args.modes,
            args.steps,
            args.repeats,
            device,
            warmup_steps=args.warmup,
            batch_size=args.batch_size,
            num_workers=args.workers,
            packed_models=args.packed,
            packed_batch_size=args.packed_batch_size,
            packed_mode=args.packed_mode,
            compile_on_cpu=args.compile_on_cpu,
            dataset_size=args.dataset_size,
            seed=args.seed,
            earlier=earlier,
            earlier_source=str(csv_path),
            progress=lambda rows: write_csv(csv_path, rows),
        )
    except StudyError as error:
        sys.exit(f"error: {error}")
    drawn = benchmark.write_plot(frame, plot_path)
    print(f"\nmachine: {benchmark.describe_machine(device)}")
    print(f"median of {args.repeats} repeats of {args.steps} steps after {args.warmup} warm-up steps\n")
    print(benchmark.markdown_table(frame))
    print("\nour fastest mode against the classical pipeline, per depth:\n")
    print(benchmark.ratio_table(frame))
    if args.packed:
        print("\nK models per device: packed into one step, one after the other, or K processes at once:\n")
        print(benchmark.sharing_table(frame))
    print(f"\nwrote {csv_path}" + (f" and {plot_path}" if drawn else " (no figures to plot)"))
    failed = benchmark.failures(frame)
    if not failed.empty:
        sys.exit(f"error: {len(failed)} measurement(s) failed; their rows say why: {failed['note'].iloc[0]}")


if __name__ == "__main__":
    main()
