"""The dataset's figures: error vs depth, learning curves (all variants at one depth, and one figure per
run in ``output.run_curves``), error vs parameters, confusion matrix and, when the rule declares it
(deployed runs), error vs CPU latency.

Only the files the rule declares are read: each run's history.csv and eval.json, found through
``params.runs``, the runs' (dataset, variant, depth, seed) in the order of those inputs."""

from pathlib import Path

import numpy as np
import pandas as pd

from cifar_resnet.errors import StudyError
from cifar_resnet.layout import RUN_NAME
from cifar_resnet.plots import (
    confusion_runs,
    curve_depth,
    learning_curve_runs,
    plot_confusion_matrix,
    plot_error_vs_depth,
    plot_error_vs_latency,
    plot_error_vs_params,
    plot_learning_curves,
    plot_run_curve,
)
from cifar_resnet.records import read_eval_record, read_trained_history
from cifar_resnet.summary import read_summary
from cifar_resnet.tables import PAPER_TABLE6_ERROR
from cifar_resnet.workflow import run_job


def by_run(paths) -> dict[tuple, str]:
    """The declared ``paths``, one per run, by the run's (dataset, variant, depth, seed)."""
    return dict(zip(map(tuple, snakemake.params.runs), paths, strict=True))


def declared(paths: dict[tuple, str], row) -> str:
    """The path in ``paths`` of the run of a summary row."""
    run = (str(row.dataset), str(row.variant), int(row.depth), int(row.seed))
    if run not in paths:
        raise StudyError(
            f"{snakemake.input.summary} lists the run {row.dataset}/{row.variant}/ResNet-{row.depth}"
            f"/seed {row.seed}, which the plots rule does not declare; rerun summarize."
        )
    return paths[run]


def plots():
    summary = read_summary(snakemake.input.summary)
    output, baseline = snakemake.output, snakemake.params.baseline
    paper = PAPER_TABLE6_ERROR if snakemake.params.paper_reference else None
    plot_error_vs_depth(summary, output.error_vs_depth, paper)
    plot_error_vs_params(summary, output.error_vs_params)
    latency_plot = output.get("error_vs_latency")
    if latency_plot:
        plot_error_vs_latency(summary, latency_plot)

    history_files = by_run(snakemake.input.histories)
    histories = {
        row.Index: pd.DataFrame(read_trained_history(declared(history_files, row)))
        for row in summary.itertuples()
    }
    for row in summary.itertuples():
        plot_run_curve(
            histories[row.Index],
            Path(output.run_curves)
            / f"{RUN_NAME.format(variant=row.variant, depth=row.depth, seed=row.seed)}.png",
            f"{row.variant} ResNet-{row.depth}, seed {row.seed}",
            int(row.selected_epoch),
            float(row.test_error),
        )

    depth = curve_depth(summary, snakemake.params.options["learning_curve_depth"])
    plot_learning_curves(
        {
            f"{row.variant} / ResNet-{depth} / seed {row.seed}": histories[row.Index]
            for row in learning_curve_runs(summary, depth).itertuples()
        },
        output.learning_curves,
    )

    shown = confusion_runs(summary, depth, baseline)
    evaluation_files = by_run(snakemake.input.evaluation)
    evaluations = [read_eval_record(declared(evaluation_files, row)) for row in shown.itertuples()]
    plot_confusion_matrix(
        np.sum([evaluation["confusion_matrix"] for evaluation in evaluations], axis=0),
        evaluations[0]["class_names"],
        output.confusion_matrix,
        f"{shown['variant'].iloc[0]} ResNet-{depth}, test set, {len(evaluations)} seed(s) summed",
    )


run_job(snakemake, plots)
