"""The ``cifar-resnet`` command (or ``python -m cifar_resnet.cli``): ``benchmark`` answers which mode
trains fastest on this machine; ``status`` how far a study has come; ``release`` packs finished runs for
torch.hub.

    cifar-resnet benchmark --depths 20 56 110 --min-seconds 1 --rounds 3 --out results/benchmark
    cifar-resnet benchmark --small          # CI smoke run: under a minute on 2 CPU cores
    cifar-resnet status --configfile config/demo.yaml
    cifar-resnet release release/ results/cifar10/runs/paper/resnet*/seed*

The GPU check and the speed targets' verdicts are the repository's tools (tools/ in a clone), not
installed commands. See docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cifar_resnet.benchmark.modes import ALL_MODES, DEFAULT_MODES, Mode, packing_mode
from cifar_resnet.config import DEFAULT_CONFIG, load_study, read_study_config
from cifar_resnet.errors import exit_on_study_error
from cifar_resnet.files import write_csv
from cifar_resnet.status import describe, study_state, training_seconds_left

# torch, the benchmark's pipelines and the release's tensors are imported by the subcommands that use
# them, so that ``status`` and ``--help`` start without them.

BENCHMARK = """Training speed of the CIFAR ResNets on this machine: a training job's step loop in each
mode, the classical DataLoader pipeline, and K models per device (packed into one step, one after the
other, or in K processes at once), as images/s, seconds per 45k-image epoch and peak device memory.
Every pipeline trains the paper recipe of the study config. Writes OUT/benchmark.csv and
OUT/benchmark.png, and prints the tables."""
STATUS = """How far the study in this directory has come, from its files alone (locally or under SLURM):
every run that is training (epoch k of N, its time left), trained, or failed (with its log), the counts of
runs done and waiting, and the training time left."""
RELEASE = """Pack finished runs into a new folder to attach to a GitHub release (or serve from any web server)
and load with torch.hub (hubconf.py): per run its weights with the architecture, normalisation, class names
and provenance in one file named with its sha256, its ONNX and INT8 models, a model card; manifest.json
and SHA256SUMS for the folder. The model cards load the models through torch.hub from the GitHub repository
that holds hubconf.py: --repository, by default the Repository URL under [project.urls] of the installed
package (pyproject.toml); without either, nothing is written."""
# Figures from a --small run only show that everything runs; its batch sizes are not the recipe's.
SMALL = {
    "depths": [20],
    "min_seconds": 0.0,
    "warmup": 1,
    "rounds": 3,
    "workers": 1,
    "cores": 2,
    "batch_size": 16,
    "packed": [2],
    "packed_batch_size": 8,
    "dataset_size": 1024,
}


def add_benchmark_options(parser: argparse.ArgumentParser) -> None:
    """The ``benchmark`` subcommand's options, in the order its help lists them."""
    add_protocol_options(parser)
    add_core_options(parser)
    add_packing_options(parser)
    add_run_options(parser)


def add_protocol_options(parser: argparse.ArgumentParser) -> None:
    """What each row of our step and the classical pipeline trains, and how its speed is measured."""
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 32, 44, 56, 110])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=list(DEFAULT_MODES),
        help="our step's modes: eager or compile, +bf16, +channels_last, +cuda_graphs; 'all' for all",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=1.0,
        help="shortest timed repeat; each row's steps per repeat come from its measured step time",
    )
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before the rounds")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="interleaved rounds, one repeat of each row per round; median and range reported",
    )
    parser.add_argument("--batch-size", type=int, help="images per step (default: the recipe's)")


def add_core_options(parser: argparse.ArgumentParser) -> None:
    """The cores each row uses: the classical pipeline's workers, and torch threads."""
    parser.add_argument(
        "--workers",
        type=int,
        help="classical DataLoader workers (min(8, CPUs - 1))",
    )
    parser.add_argument(
        "--cores",
        type=int,
        help="cores per row (default: workers + 1): our torch threads; the classical pipeline's threads "
        "plus its workers; K processes' threads together",
    )


def add_packing_options(parser: argparse.ArgumentParser) -> None:
    """The K-model rows: how many models per device, their batch and their mode."""
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


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The run as a whole: its device, data, seed and study config, where it writes, and its presets."""
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dataset-size", type=int, help="synthetic images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="the study config whose paper recipe is trained"
    )
    parser.add_argument("--out", type=Path, default=Path("results/benchmark"))
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run of the same command: keep the rows OUT/benchmark.csv already has",
    )
    parser.add_argument("--small", action="store_true", help=f"CI smoke run; sets {SMALL} unless given")


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command's parser and its ``benchmark`` subcommand's (which ``--small`` gives defaults)."""
    parser = argparse.ArgumentParser(
        prog="cifar-resnet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    benchmark = commands.add_parser(
        "benchmark", help="training throughput per depth and mode", description=BENCHMARK
    )
    add_benchmark_options(benchmark)
    status = commands.add_parser("status", help="how far a study has come", description=STATUS)
    status.add_argument(
        "--configfile",
        type=Path,
        nargs="*",
        default=[],
        help="the configuration files given to snakemake with --configfile, applied over config/config.yaml",
    )
    release = commands.add_parser("release", help="pack finished runs for torch.hub", description=RELEASE)
    release.add_argument("out", type=Path, help="the release folder to create")
    release.add_argument("runs", type=Path, nargs="+", help="the runs' folders (results/DATASET/runs/...)")
    release.add_argument(
        "--repository",
        metavar="OWNER/NAME[:TAG]",
        help="the GitHub repository torch.hub loads the models from (default: the package's Repository URL)",
    )
    release.add_argument(
        "--url",
        metavar="MANIFEST_URL",
        help="the URL this folder's manifest.json will have once published, which the model cards then "
        "load from; without it they ask the reader for it",
    )
    return parser, benchmark


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser, benchmark = build_parser()
    if getattr(parser.parse_known_args(argv)[0], "small", False):
        benchmark.set_defaults(**SMALL)
    args = parser.parse_args(argv)
    if args.command == "benchmark":
        complete_benchmark_args(args, benchmark)
    return args


def complete_benchmark_args(args: argparse.Namespace, benchmark: argparse.ArgumentParser) -> None:
    """The benchmark's defaults that come from its pipelines (imported here, with torch, as the other
    subcommands need neither), and the checks of its options that argparse does not make."""
    import torch

    from cifar_resnet.benchmark.data import EPOCH_IMAGES
    from cifar_resnet.benchmark.pipelines import default_workers

    if args.workers is None:
        args.workers = default_workers()
    if args.dataset_size is None:
        args.dataset_size = EPOCH_IMAGES
    if args.modes == ["all"]:
        args.modes = list(ALL_MODES)
    if args.rounds < 3:
        benchmark.error("--rounds must be at least 3: a median and range of fewer says little")
    if args.cores is not None and args.cores < 1:
        benchmark.error("--cores must be at least 1")
    try:
        for name in args.modes:
            Mode.parse(name)
        packing_mode(args.packed_mode, torch.device("cpu"))
    except ValueError as error:
        benchmark.error(str(error))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with exit_on_study_error():
        {"benchmark": run_benchmark, "status": show_status, "release": make_release}[args.command](args)


def make_release(args: argparse.Namespace) -> None:
    from cifar_resnet.release import release_runs  # with torch, which reads and writes the weights

    manifest = release_runs(args.runs, args.out, repository=args.repository, url=args.url)
    print(f"released {len(manifest['models'])} model(s) in {args.out}; attach its files to a release")


def show_status(args: argparse.Namespace) -> None:
    """Print the study's state, its configuration read as the workflow reads it, from the working
    directory's files (run it where you run snakemake)."""
    config = read_study_config(args.configfile)
    study = load_study(config)
    states = study_state(study, deploys=config["deploy"]["enabled"])
    print(describe(states, training_seconds_left(states, study)))


def run_benchmark(args: argparse.Namespace) -> None:
    from cifar_resnet.benchmark import runner, tables
    from cifar_resnet.benchmark.settings import load_settings

    logging.basicConfig(format="%(message)s")
    logging.getLogger("cifar_resnet").setLevel(logging.INFO)
    csv_path, plot_path = args.out / "benchmark.csv", args.out / "benchmark.png"
    device = runner.resolve_device(args.device)
    logging.getLogger("cifar_resnet.runtime").setLevel(logging.WARNING)  # not again for every trainer
    frame = runner.run_benchmark(
        args.depths,
        args.modes,
        args.min_seconds,
        args.rounds,
        device,
        warmup_steps=args.warmup,
        batch_size=args.batch_size,
        num_workers=args.workers,
        cores=args.cores,
        packed_models=args.packed,
        packed_batch_size=args.packed_batch_size,
        packed_mode=args.packed_mode,
        dataset_size=args.dataset_size,
        seed=args.seed,
        settings=load_settings(args.config),
        earlier=runner.read_results(csv_path) if args.resume and csv_path.exists() else None,
        earlier_source=str(csv_path),
        progress=lambda rows: write_csv(csv_path, rows),
    )
    drawn = tables.write_plot(frame, plot_path)
    print(f"\nmachine: {runner.describe_machine(device)}")
    print(
        f"median and range over {args.rounds} interleaved rounds, each repeat at least {args.min_seconds} s "
        f"after {args.warmup} warm-up steps; cores: torch threads plus worker or job processes\n"
    )
    print(tables.markdown_table(frame))
    print("\nour fastest mode against the classical pipeline on equal cores, per depth, within rounds:\n")
    print(tables.ratio_table(frame))
    if args.packed:
        print("\nK models per device: packed into one step, one after the other, or K processes at once:\n")
        print(tables.sharing_table(frame))
    print(f"\nwrote {csv_path}" + (f" and {plot_path}" if drawn else " (no figures to plot)"))
    failed = runner.failures(frame)
    if not failed.empty:
        sys.exit(f"error: {len(failed)} measurement(s) failed; their rows say why: {failed['note'].iloc[0]}")


if __name__ == "__main__":
    main()
