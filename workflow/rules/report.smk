# Aggregation, the accuracy table, plots, the README block and the HTML report: small jobs on the
# submitting host.


README_DATASETS = [d for d in STUDY.datasets if d in REAL_DATASETS]


localrules:
    summarize,
    accuracy_table,
    plots,
    readme,
    report,


rule summarize:
    input:
        train=lambda wildcards: run_files(wildcards.dataset, "train.json"),
        evaluation=lambda wildcards: run_files(wildcards.dataset, "eval.json"),
        deploy=lambda wildcards: (
            run_files(wildcards.dataset, "deploy.json") if DEPLOYS else []
        ),
    output:
        report(
            SUMMARY,
            caption="../report/summary.rst",
            category="Data",
            labels={"dataset": "{dataset}", "file": "summary.csv"},
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
