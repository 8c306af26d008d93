import re
from pathlib import Path

from snakemake.utils import min_version

from cifar_resnet.config import Run, load_study
from cifar_resnet.sources import DATASETS, downloaded_datasets, get_source
from cifar_resnet.report import PLOT_NAMES as PLOTS

min_version("9.0")

STUDY = load_study(config, Path(workflow.basedir) / "config" / "schema.yaml")
DATA_ROOT = config["data"]["root"]
REAL_DATASETS = downloaded_datasets()
RUN_DIR = "results/{dataset}/runs/{variant}/resnet{depth}/seed{seed}"


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


def prepared_path(wildcards) -> str:
    return f"{DATA_ROOT}/{wildcards.dataset}/prepared.pt"


def pretrained_model(wildcards) -> list[str]:
    source = STUDY.pretraining_run(run_of(wildcards))
    return [f"{source.directory}/model.pt"] if source else []


def run_files(dataset: str, name: str) -> list[str]:
    return [f"{run.directory}/{name}" for run in STUDY.runs(dataset)]


def paper_reference(wildcards) -> bool:
    """Whether the dataset's figures and table show the paper's Table 6 column."""
    return get_source(wildcards.dataset).paper_reference


def final_outputs() -> list[str]:
    outputs = []
    for dataset in STUDY.datasets:
        outputs += [
            f"results/{dataset}/summary.csv",
            f"results/{dataset}/tables/accuracy.md",
        ]
        outputs += [f"results/{dataset}/plots/{name}.png" for name in PLOTS]
    if config["report"]["update_readme"] and set(STUDY.datasets) & set(REAL_DATASETS):
        outputs.append("results/readme_block.md")
    return outputs


def train_minutes(wildcards) -> int:
    """A SLURM time limit with room to spare for an H100-class GPU, scaled by depth and width."""
    recipe = STUDY.recipes[wildcards.variant]
    return 20 + int(wildcards.depth) * recipe["model"]["width"] ** 2 // 2
