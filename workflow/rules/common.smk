import os
import re
import sys
from pathlib import Path

# The workflow's own package, from the src/ folder beside workflow/ (also where the workflow is used as
# a module): Snakemake's process imports it from there, and every job inherits the path (the host's
# Python, a rule's conda environment under --sdm conda, a cluster node, whose job reads this file
# again), so nothing needs installing or setting.
RULES_FOLDER = workflow.current_basedir.get_path_or_uri(secret_free=True)
PACKAGE_PATH = str(Path(RULES_FOLDER).parents[1] / "src")
if PACKAGE_PATH not in sys.path:
    sys.path.insert(0, PACKAGE_PATH)
INHERITED_PATH = os.getenv("PYTHONPATH", "").split(os.pathsep)
# Nothing outside the working folder: matplotlib's font cache goes under .snakemake/, and onnxruntime's
# telemetry, which would write a device id and a database under ~/.cache, is off.
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        dict.fromkeys(filter(None, [PACKAGE_PATH, *INHERITED_PATH]))
    ),
    MPLCONFIGDIR=str(Path(".snakemake", "matplotlib").resolve()),
    ORT_DISABLE_TELEMETRY="1",
)

from cifar_resnet.config import Run, check_unique_keys, load_study
from cifar_resnet.errors import exit_on_study_error
from cifar_resnet.layout import (
    DEPLOYMENT_PLOTS,
    LOGS,
    RESULTS,
    RESUME_FILE,
    RUN_DIR,
    RUN_NAME,
    plot_names,
    run_path,
)
from cifar_resnet.preflight import check_before_jobs, check_local_device
from cifar_resnet.report import write_report
from cifar_resnet.sources import DATASETS, downloaded_datasets, get_source

# A StudyError in Snakemake's own process ends it with the sentence alone, as in a job, rather than
# under the frames of the workflow's files.
with exit_on_study_error():
    check_unique_keys(workflow.configfiles)
    STUDY = load_study(config, command_line=workflow.config_settings.config)
DATA_ROOT = config["data"]["root"]
REAL_DATASETS = downloaded_datasets()

PREPARED = f"{DATA_ROOT}/{{dataset}}/prepared.pt"

# Threads of a training job. Its data lives on its device, so on a GPU one thread launches the
# kernels and the job needs few more. On the CPU, single-thread jobs side by side give more images/s
# than one job on every core (the benchmark's `jobs` rows, docs/benchmark.md), and the grid has jobs
# to spare.
JOB_THREADS = 1
SUMMARY = f"{RESULTS}/{{dataset}}/summary.csv"
ACCURACY_TABLE = f"{RESULTS}/{{dataset}}/tables/accuracy.md"
ACCURACY_HTML = f"{RESULTS}/{{dataset}}/tables/accuracy.html"
ACCURACY_STATISTICS = f"{RESULTS}/{{dataset}}/tables/accuracy.csv"
RUN_CURVES = f"{RESULTS}/{{dataset}}/plots/runs"
TRAIN_LOG = f"{LOGS}/train/{RUN_NAME}.log"
DEPLOY_LOG = f"{LOGS}/deploy/{RUN_NAME}.log"
# `snakemake report` writes it; a target rule takes no wildcards, so one path for every study.
REPORT = f"{RESULTS}/report.html"
README_BLOCK = f"{RESULTS}/readme_block.md"
README = "README.md"
DEPLOYS = config["deploy"]["enabled"]
BUILDS_INT8 = DEPLOYS and config["deploy"]["int8"]
PLOTS = plot_names(DEPLOYS)
# The README's results block belongs to this repository: by default (auto) it is spliced only where the
# workflow runs in its own clone, never into the working directory of a deployment (a module, or -s).
IN_OWN_REPOSITORY = Path(RULES_FOLDER).parents[1].resolve() == Path.cwd().resolve()
SPLICES_README = config["report"]["update_readme"]
UPDATES_README = (
    SPLICES_README is True or (SPLICES_README == "auto" and IN_OWN_REPOSITORY)
) and bool(set(STUDY.datasets) & set(REAL_DATASETS))


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS)),
    variant="|".join(map(re.escape, config["variants"])),
    depth=r"\d+",
    seed=r"\d+",


def run_of(wildcards) -> Run:
    return Run(
        wildcards.dataset, wildcards.variant, int(wildcards.depth), int(wildcards.seed)
    )


def archive_path(dataset: str) -> str:
    return f"{DATA_ROOT}/{dataset}/{get_source(dataset).archive_name}"


def pretrained_model(wildcards) -> list[str]:
    source = STUDY.pretraining_run(run_of(wildcards))
    return [run_path(f"{RUN_DIR}/model.pt", source)] if source else []


def deployed_models() -> dict[str, str]:
    """The export's model files: the float ONNX model, and the INT8 one where it is built."""
    models = {"onnx": f"{RUN_DIR}/model.onnx"}
    if BUILDS_INT8:
        models["int8"] = f"{RUN_DIR}/model.int8.onnx"
    return models


def run_files(dataset: str, name: str) -> list[str]:
    return [run_path(f"{RUN_DIR}/{name}", run) for run in STUDY.runs(dataset)]


def primary_results() -> list[str]:
    """Every trained run's model.pt, history.csv and train.json and every study run's eval.json and,
    when deploying, its exported models and deploy.json."""
    outputs = [
        run_path(f"{RUN_DIR}/{name}", run)
        for run in STUDY.trained_runs()
        for name in ("model.pt", "history.csv", "train.json")
    ]
    per_run = [f"{RUN_DIR}/eval.json"]
    if DEPLOYS:
        per_run += [*deployed_models().values(), f"{RUN_DIR}/deploy.json"]
    return outputs + [
        run_path(pattern, run) for run in STUDY.runs() for pattern in per_run
    ]


def plot_file(dataset: str, name: str) -> str:
    return f"{RESULTS}/{dataset}/plots/{name}.png"


def run_keys(dataset: str) -> list[list]:
    """The dataset's runs as [dataset, variant, depth, seed], in the order of run_files."""
    return [[r.dataset, r.variant, r.depth, r.seed] for r in STUDY.runs(dataset)]


def paper_reference(wildcards) -> bool:
    """Whether the dataset's figures and table show the paper's Table 6 column."""
    return get_source(wildcards.dataset).paper_reference


def final_outputs() -> list[str]:
    """The primary results, so that a deleted one is rebuilt, then the aggregates."""
    outputs = primary_results()
    for dataset in STUDY.datasets:
        outputs += [
            SUMMARY.format(dataset=dataset),
            ACCURACY_TABLE.format(dataset=dataset),
            ACCURACY_HTML.format(dataset=dataset),
            ACCURACY_STATISTICS.format(dataset=dataset),
            RUN_CURVES.format(dataset=dataset),
        ]
        outputs += [plot_file(dataset, name) for name in PLOTS]
    if UPDATES_README:
        outputs.append(README_BLOCK)
    return outputs


def run_compute(wildcards) -> int:
    """A run's compute relative to the others' (depth x width squared). Its jobs' priority: the longest
    start first, so that none is left running alone at the end."""
    return (
        int(wildcards.depth) * STUDY.recipes[wildcards.variant]["model"]["width"] ** 2
    )


def train_minutes(wildcards) -> int:
    """A SLURM time limit with room to spare for an H100-class GPU, scaled by depth and width."""
    return 20 + run_compute(wildcards) // 2


def growing(limit):
    """A time or memory limit (a number, or a function of the wildcards) times the attempt, so that a
    job retried after hitting its limit gets a larger one rather than the same."""
    return (
        lambda wildcards, attempt: (limit(wildcards) if callable(limit) else limit)
        * attempt
    )


# A cluster submits each group as one job: a run's training (which ends with its evaluation) and its
# deployment, so that one submission waits in the queue per run; and the demo's archive with its
# preparation. A run's group is its own: a pretraining edge must not join two runs into one job.
RUN_GROUP = "run_{dataset}_{variant}_{depth}_{seed}"
DATA_GROUP = "data"


# Before any job starts (cifar_resnet.preflight). Only the scheduling process checks: a cluster job
# reads this workflow again, and would read every run's files again for each job.
if workflow.is_main_process:
    PREPARED_FILES = [PREPARED.format(dataset=dataset) for dataset in STUDY.datasets]
    WRITTEN = [
        *final_outputs(),
        *PREPARED_FILES,
        *([README] if UPDATES_README else []),
        *[
            run_path(pattern, run)
            for run in STUDY.trained_runs()
            for pattern in (RESUME_FILE, TRAIN_LOG, DEPLOY_LOG)
        ],
    ]
    with exit_on_study_error():
        check_before_jobs(
            WRITTEN, PREPARED_FILES, Path(README) if UPDATES_README else None
        )


# Once the executor is known (not when the workflow is read): a local run that asks for CUDA on a
# machine without it stops here, before any job.
onstart:
    with exit_on_study_error():
        check_local_device(
            config["runtime"]["device"],
            local=not workflow.executor_plugin.common_settings.non_local_exec,
        )
