# Aggregation, the accuracy table, plots and the README block: small jobs on the submitting host.


README_DATASETS = [d for d in STUDY.datasets if d in REAL_DATASETS]


def plot_file(dataset: str, name: str) -> str:
    return f"results/{dataset}/plots/{name}.png"


def run_keys(dataset: str) -> list[list]:
    """The dataset's runs as [dataset, variant, depth, seed], in the order of run_files."""
    return [[r.dataset, r.variant, r.depth, r.seed] for r in STUDY.runs(dataset)]


localrules:
    summarize,
    accuracy_table,
    plots,
    readme,


rule summarize:
    input:
        train=lambda wildcards: run_files(wildcards.dataset, "train.json"),
        evaluation=lambda wildcards: run_files(wildcards.dataset, "eval.json"),
    output:
        "results/{dataset}/summary.csv",
    log:
        "results/{dataset}/logs/summarize.log",
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/summarize.py"


rule accuracy_table:
    input:
        "results/{dataset}/summary.csv",
    output:
        report(
            "results/{dataset}/tables/accuracy.md",
            caption="../report/accuracy_table.rst",
            category="Accuracy",
            labels={"dataset": "{dataset}", "figure": "accuracy table"},
        ),
    log:
        "results/{dataset}/logs/accuracy_table.log",
    conda:
        "../envs/report.yaml"
    params:
        baseline=config["report"]["baseline_variant"],
        alpha=config["report"]["significance_level"],
        paper_reference=lambda wildcards: wildcards.dataset == "cifar10",
    script:
        "../scripts/accuracy_table.py"


rule plots:
    input:
        summary="results/{dataset}/summary.csv",
        histories=lambda wildcards: run_files(wildcards.dataset, "history.csv"),
        evaluation=lambda wildcards: run_files(wildcards.dataset, "eval.json"),
    output:
        **{
            name: report(
                plot_file("{dataset}", name),
                caption=f"../report/{name}.rst",
                category="Plots",
                labels={"dataset": "{dataset}", "figure": name.replace("_", " ")},
            )
            for name in PLOTS
        },
    log:
        "results/{dataset}/logs/plots.log",
    conda:
        "../envs/report.yaml"
    params:
        options=config["report"]["plots"],
        baseline=config["report"]["baseline_variant"],
        paper_reference=lambda wildcards: wildcards.dataset == "cifar10",
        runs=lambda wildcards: run_keys(wildcards.dataset),
    script:
        "../scripts/plots.py"


rule readme:
    input:
        tables=expand("results/{dataset}/tables/accuracy.md", dataset=README_DATASETS),
    output:
        "results/readme_block.md",
    log:
        "results/logs/readme.log",
    conda:
        "../envs/report.yaml"
    params:
        readme="README.md",
        variants={name: config["variants"][name] for name in STUDY.variants},
        datasets=README_DATASETS,
        # Links from the README to each dataset's plots, as the plots rule writes them.
        plots=[{name: plot_file(d, name) for name in PLOTS} for d in README_DATASETS],
    script:
        "../scripts/readme.py"
