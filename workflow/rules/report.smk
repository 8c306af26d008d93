# Aggregation, the accuracy table, plots, the README block and the HTML report: small jobs on the
# submitting host.

from cifar_resnet.layout import (
    DEPLOYMENT_PLOTS,
    HISTORY,
    RUN_NAME,
    TRAIN_RECORD,
    plot_names,
)
from cifar_resnet.readme import splices_readme
from cifar_resnet.report import write_report

SUMMARY = f"{RESULTS}/{{dataset}}/summary.csv"
ACCURACY_TABLE = f"{RESULTS}/{{dataset}}/tables/accuracy.md"
ACCURACY_HTML = f"{RESULTS}/{{dataset}}/tables/accuracy.html"
ACCURACY_STATISTICS = f"{RESULTS}/{{dataset}}/tables/accuracy.csv"
RUN_CURVES = f"{RESULTS}/{{dataset}}/plots/runs"
PLOTS = plot_names(DEPLOYS)
# `snakemake report` writes it; a target rule takes no wildcards, so one path for every study.
REPORT = f"{RESULTS}/report.html"
README_BLOCK = f"{RESULTS}/readme_block.md"
README = "README.md"
README_DATASETS = [d for d in STUDY.datasets if d in REAL_DATASETS]
# The README's results block belongs to this repository: by default (auto) it is spliced only where the
# workflow runs in its own clone.
UPDATES_README = splices_readme(
    config["report"]["update_readme"], Path(RULES_FOLDER).parents[1], README_DATASETS
)


localrules:
    summarize,
    accuracy_table,
    plots,
    readme,
    report,


rule summarize:
    input:
        train=lambda wildcards: run_files(wildcards.dataset, TRAIN_RECORD),
        evaluation=lambda wildcards: run_files(wildcards.dataset, EVAL_RECORD),
        deploy=lambda wildcards: (
            run_files(wildcards.dataset, DEPLOY_RECORD) if DEPLOYS else []
        ),
    output:
        report(
            SUMMARY,
            caption="../report/summary.rst",
            category="Data",
            labels={"dataset": "{dataset}", "file": Path(SUMMARY).name},
        ),
    log:
        f"{LOGS}/summarize.log",
    conda:
        "../envs/report.yaml"
    script:
        "../scripts/summarize.py"


rule accuracy_table:
    input:
        SUMMARY,
    output:
        markdown=ACCURACY_TABLE,
        html=report(
            ACCURACY_HTML,
            caption="../report/accuracy_table.rst",
            category="Accuracy",
            labels={"dataset": "{dataset}", "figure": "accuracy table"},
        ),
        statistics=report(
            ACCURACY_STATISTICS,
            caption="../report/accuracy_statistics.rst",
            category="Data",
            labels={"dataset": "{dataset}", "file": "accuracy.csv"},
        ),
    log:
        f"{LOGS}/accuracy_table.log",
    conda:
        "../envs/report.yaml"
    params:
        baseline=config["report"]["baseline_variant"],
        alpha=config["report"]["significance_level"],
        paper_reference=paper_reference,
    script:
        "../scripts/accuracy_table.py"


rule plots:
    input:
        summary=SUMMARY,
        histories=lambda wildcards: run_files(wildcards.dataset, HISTORY),
        evaluation=lambda wildcards: run_files(wildcards.dataset, EVAL_RECORD),
    output:
        **{
            name: report(
                plot_file("{dataset}", name),
                caption=f"../report/{name}.rst",
                category="Deployment" if name in DEPLOYMENT_PLOTS else "Plots",
                labels={"dataset": "{dataset}", "figure": name.replace("_", " ")},
            )
            for name in PLOTS
        },
        run_curves=report(
            directory(RUN_CURVES),
            patterns=[f"{RUN_NAME}.png"],
            caption="../report/run_curve.rst",
            category="Learning curves",
            labels={
                "dataset": "{dataset}",
                "depth": "{depth}",
                "variant": "{variant}",
                "seed": "{seed}",
            },
        ),
    log:
        f"{LOGS}/plots.log",
    conda:
        "../envs/report.yaml"
    params:
        options=config["report"]["plots"],
        baseline=config["report"]["baseline_variant"],
        paper_reference=paper_reference,
        runs=lambda wildcards: run_keys(wildcards.dataset),
    script:
        "../scripts/plots.py"


rule readme:
    input:
        tables=expand(ACCURACY_TABLE, dataset=README_DATASETS),
    output:
        README_BLOCK,
    log:
        f"{RESULTS}/logs/readme.log",
    conda:
        "../envs/report.yaml"
    params:
        readme=README,
        variants={name: config["variants"][name] for name in STUDY.variants},
        datasets=README_DATASETS,
        # Links from the README to each dataset's plots, as the plots rule writes them.
        plots=[{name: plot_file(d, name) for name in PLOTS} for d in README_DATASETS],
    script:
        "../scripts/readme.py"


rule report:
    input:
        final_outputs(),
    output:
        REPORT,
    log:
        f"{RESULTS}/logs/report.log",
    run:
        write_report(
            output[0],
            workflow.main_snakefile,
            workflow.config_settings.configfiles,
            workflow.config_settings.config_args or [],
            log[0],
        )
