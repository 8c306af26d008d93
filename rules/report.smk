# Aggregation, the accuracy table, plots and the README block: small jobs on the submitting host.


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
        paper_reference=paper_reference,
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
                f"results/{{dataset}}/plots/{name}.png",
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
        paper_reference=paper_reference,
    script:
        "../scripts/plots.py"


rule readme:
    input:
        tables=expand(
            "results/{dataset}/tables/accuracy.md",
            dataset=[d for d in STUDY.datasets if d in REAL_DATASETS],
        ),
    output:
        "results/readme_block.md",
    log:
        "results/logs/readme.log",
    conda:
        "../envs/report.yaml"
    params:
        readme="README.md",
        variants={name: config["variants"][name] for name in STUDY.variants},
        datasets=[d for d in STUDY.datasets if d in REAL_DATASETS],
    script:
        "../scripts/readme.py"
