import re
from dataclasses import asdict
from pathlib import Path

from cifar_resnet.config import Run, load_study
from cifar_resnet.plots import PLOT_NAMES as PLOTS
from cifar_resnet.sources import DATASETS, downloaded_datasets, get_source

STUDY = load_study(
    config,
    Path(workflow.basedir) / "config" / "schema.yaml",
    command_line=workflow.config_settings.config,
)
DATA_ROOT = config["data"]["root"]
REAL_DATASETS = downloaded_datasets()

# Run paths are spelled here only: rules and helpers build them from RUN_DIR and RESUME_FILE. The
# resume file lies outside the run directory because Snakemake deletes a failed job's outputs.
RESULTS = "results"
LOGS = f"{RESULTS}/{{dataset}}/logs"
RUN_NAME = "{variant}/resnet{depth}/seed{seed}"
RUN_DIR = f"{RESULTS}/{{dataset}}/runs/{RUN_NAME}"
RESUME_FILE = f"{RESULTS}/{{dataset}}/resume/{RUN_NAME}.pt"
PREPARED = f"{DATA_ROOT}/{{dataset}}/prepared.pt"
SUMMARY = f"{RESULTS}/{{dataset}}/summary.csv"
ACCURACY_TABLE = f"{RESULTS}/{{dataset}}/tables/accuracy.md"
README_BLOCK = f"{RESULTS}/readme_block.md"


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


def run_path(pattern: str, run: Run) -> str:
    """``pattern`` (RUN_DIR or RESUME_FILE and what follows) for one run."""
    return pattern.format(**asdict(run))


def pretrained_model(wildcards) -> list[str]:
    source = STUDY.pretraining_run(run_of(wildcards))
    return [run_path(f"{RUN_DIR}/model.pt", source)] if source else []


def run_files(dataset: str, name: str) -> list[str]:
    return [run_path(f"{RUN_DIR}/{name}", run) for run in STUDY.runs(dataset)]


def plot_file(dataset: str, name: str) -> str:
    return f"{RESULTS}/{dataset}/plots/{name}.png"


def run_keys(dataset: str) -> list[list]:
    """The dataset's runs as [dataset, variant, depth, seed], in the order of run_files."""
    return [[r.dataset, r.variant, r.depth, r.seed] for r in STUDY.runs(dataset)]


def paper_reference(wildcards) -> bool:
    """Whether the dataset's figures and table show the paper's Table 6 column."""
    return get_source(wildcards.dataset).paper_reference


def final_outputs() -> list[str]:
    outputs = []
    for dataset in STUDY.datasets:
        outputs += [
            SUMMARY.format(dataset=dataset),
            ACCURACY_TABLE.format(dataset=dataset),
        ]
        outputs += [plot_file(dataset, name) for name in PLOTS]
    if config["report"]["update_readme"] and set(STUDY.datasets) & set(REAL_DATASETS):
        outputs.append(README_BLOCK)
    return outputs


def train_minutes(wildcards) -> int:
    """A SLURM time limit with room to spare for an H100-class GPU, scaled by depth and width."""
    recipe = STUDY.recipes[wildcards.variant]
    return 20 + int(wildcards.depth) * recipe["model"]["width"] ** 2 // 2
