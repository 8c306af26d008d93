# Aggregation, the accuracy table, plots and the README block: small jobs on the submitting host.


README_DATASETS = [d for d in STUDY.datasets if d in REAL_DATASETS]


localrules:
    summarize,
    accuracy_table,
    plots,
    readme,


rule summarize:
    input:
        train=lambda wildcards: run_files(wildcards.dataset, "train.json"),
        evaluation=lambda wildcards: run_files(wildcards.dataset, "eval.json"),
        deploy=lambda wildcards: (
            run_files(wildcards.dataset, "deploy.json") if DEPLOYS else []
        ),
    output:
        SUMMARY,
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
        report(
            ACCURACY_TABLE,
            caption="../report/accuracy_table.rst",
            category="Accuracy",
            labels={"dataset": "{dataset}", "figure": "accuracy table"},
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
        histories=lambda wildcards: run_files(wildcards.dataset, "history.csv"),
        evaluation=lambda wildcards: run_files(wildcards.dataset, "eval.json"),
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
