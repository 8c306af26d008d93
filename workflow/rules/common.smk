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
    DEPLOYED_MODELS,
    DEPLOY_RECORD,
    EVAL_RECORD,
    LOGS,
    MODEL,
    RESULTS,
    RUN_DIR,
    TRAINED,
    run_file,
)
from cifar_resnet.sources import DATASETS, downloaded_datasets, get_source

# A StudyError in Snakemake's own process ends it with the sentence alone, as in a job, rather than
# under the frames of the workflow's files.
with exit_on_study_error():
    check_unique_keys(workflow.configfiles)
    STUDY = load_study(config, command_line=workflow.config_settings.config)
DATA_ROOT = config["data"]["root"]
REAL_DATASETS = downloaded_datasets()
PREPARED = f"{DATA_ROOT}/{{dataset}}/prepared.pt"
DEPLOYS = config["deploy"]["enabled"]
# The deployment's model files by kind: the float ONNX model, and the INT8 one where it is built.
DEPLOYED = {
    kind: name
    for kind, name in DEPLOYED_MODELS.items()
    if kind != "int8" or config["deploy"]["int8"]
}


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


def run_files(dataset: str, name: str) -> list[str]:
    return [run_file(name, run) for run in STUDY.runs(dataset)]


def primary_results() -> list[str]:
    """Every trained run's model, history and train.json and every study run's eval.json and, when
    deploying, its exported models and deploy.json."""
    outputs = [run_file(name, run) for run in STUDY.trained_runs() for name in TRAINED]
    per_run = (
        [EVAL_RECORD, *DEPLOYED.values(), DEPLOY_RECORD] if DEPLOYS else [EVAL_RECORD]
    )
    return outputs + [run_file(name, run) for run in STUDY.runs() for name in per_run]


def run_compute(wildcards) -> int:
    """A run's compute relative to the others'. Its jobs' priority: the longest start first, so that none
    is left running alone at the end."""
    return STUDY.compute(run_of(wildcards))


def pretrained_model(wildcards) -> list[str]:
    source = STUDY.pretraining_run(run_of(wildcards))
    return [run_file(MODEL, source)] if source else []


def train_minutes(wildcards) -> int:
    """A SLURM time limit with room to spare for an H100-class GPU, scaled by the run's compute."""
    return 20 + run_compute(wildcards) // 2


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
            pattern.format(dataset=dataset)
            for pattern in (
                SUMMARY,
                ACCURACY_TABLE,
                ACCURACY_HTML,
                ACCURACY_STATISTICS,
                RUN_CURVES,
            )
        ]
        outputs += [plot_file(dataset, name) for name in PLOTS]
    if UPDATES_README:
        outputs.append(README_BLOCK)
    return outputs


def growing(limit):
    """A time or memory limit (a number, or a function of the wildcards) times the attempt, so that a
    job retried after hitting its limit gets a larger one rather than the same."""
    return (
        lambda wildcards, attempt: (limit(wildcards) if callable(limit) else limit)
        * attempt
    )


# A cluster submits each group as one job: a run's training (which ends with its evaluation) and its
# deployment, so that one submission waits in the queue per run. A run's group is its own: a
# pretraining edge must not join two runs into one job.
RUN_GROUP = "run_{dataset}_{variant}_{depth}_{seed}"
