"""What a benchmark run's rows show: our fastest mode against the classical pipeline, the fastest way to
train K models per device, the rows as a GitHub table, and the plot of images/s against depth."""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tabulate import tabulate

from cifar_resnet.benchmark.runner import CLASSICAL, JOBS, OURS, PACKED, SEQUENTIAL
from cifar_resnet.files import atomic_output


def ratio_to_classical(frame: pd.DataFrame) -> pd.DataFrame:
    """Per depth: our fastest measured mode, its images/s, the classical pipeline's and their ratio."""
    measured = frame.dropna(subset=["images_per_s"])
    ours = measured[measured["pipeline"] == OURS]
    best = ours.loc[ours.groupby("depth")["images_per_s"].idxmax(), ["depth", "mode", "images_per_s"]]
    classical = measured[measured["pipeline"] == CLASSICAL][["depth", "images_per_s"]]
    table = best.merge(classical, on="depth", suffixes=("", "_classical"))
    table = table.rename(columns={"mode": "best_mode", "images_per_s_classical": "classical_images_per_s"})
    table["ratio"] = table["images_per_s"] / table["classical_images_per_s"]
    return table.reset_index(drop=True)


def sharing_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Per depth and K: the aggregate images/s of K models packed into one step, trained one after the
    other, and trained by K processes at once; which wins, and its margin over the runner-up."""
    measured = frame[frame["pipeline"].isin([PACKED, SEQUENTIAL, JOBS])].dropna(subset=["images_per_s"])
    measured = measured.assign(K=measured["mode"].str.extract(r"K=(\d+)", expand=False).astype(int))
    table = measured.pivot_table(index=["depth", "K"], columns="pipeline", values="images_per_s")
    rates = table.reindex(columns=[PACKED, SEQUENTIAL, JOBS])
    table = rates.assign(winner=rates.idxmax(axis=1), margin=rates.apply(margin_over_runner_up, axis=1))
    return table.reset_index().rename_axis(columns=None)


def margin_over_runner_up(rates: pd.Series) -> float:
    best_two = rates.dropna().nlargest(2)
    return best_two.iloc[0] / best_two.iloc[1] if len(best_two) == 2 else float("nan")


def write_plot(frame: pd.DataFrame, plot_path) -> bool:
    """Images/s against depth, one line per pipeline and mode, on a log y-axis; False when no row has
    figures to draw."""
    measured = frame.dropna(subset=["images_per_s"]).assign(
        run=lambda rows: rows["pipeline"] + ": " + rows["mode"] + ", batch " + rows["batch_size"].astype(str)
    )
    if measured.empty:
        return False
    depths = sorted(measured["depth"].unique())
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        figure = Figure(figsize=(10, 4.5), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        sns.lineplot(
            measured, x="depth", y="images_per_s", hue="run", style="pipeline", markers=True, ax=axes
        )
        axes.set_yscale("log")
        axes.set_xticks(depths, [f"ResNet-{depth}" for depth in depths])
        devices = ", ".join(sorted(measured["device"].unique()))
        axes.set(
            xlabel="Depth", ylabel="Training images/s (log scale)", title=f"Training throughput on {devices}"
        )
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
        with atomic_output(plot_path) as temporary:
            figure.savefig(temporary, format="png", dpi=120)
    return True


def github_table(frame: pd.DataFrame) -> str:
    return tabulate(frame, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)


def markdown_table(frame: pd.DataFrame) -> str:
    """The rows as a GitHub table with readable numbers; rows without figures show their note."""
    shown = frame.drop(columns=["device", "machine", "steps", "warmup_steps"]).assign(
        images_per_s=frame["images_per_s"].map("{:,.0f}".format),
        seconds_per_epoch=frame["seconds_per_epoch"].map("{:,.1f}".format),
        peak_memory_mb=frame["peak_memory_mb"].map("{:,.0f}".format),
    )
    return github_table(shown.replace("nan", "—"))


def sharing_table(frame: pd.DataFrame) -> str:
    shown = sharing_comparison(frame)
    for column in (PACKED, SEQUENTIAL, JOBS):
        shown[column] = shown[column].map("{:,.0f}".format).replace("nan", "—")
    shown["margin"] = shown["margin"].map("{:.2f}x".format).replace("nanx", "—")
    return github_table(shown)


def ratio_table(frame: pd.DataFrame) -> str:
    ratios = ratio_to_classical(frame).assign(
        images_per_s=lambda table: table["images_per_s"].map("{:,.0f}".format),
        classical_images_per_s=lambda table: table["classical_images_per_s"].map("{:,.0f}".format),
        ratio=lambda table: table["ratio"].map("{:.2f}x".format),
    )
    return github_table(ratios)
