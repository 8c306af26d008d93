"""What a benchmark run's rows show: our fastest mode against the classical pipeline on equal cores, the
fastest way to train K models per device, each ratio taken within a round and given as its median and
range, the rows as a GitHub table, and the plot of images/s against depth."""

from __future__ import annotations

import statistics

import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tabulate import tabulate

from cifar_resnet.benchmark.runner import CLASSICAL, JOBS, OURS, PACKED, SEQUENTIAL, rounds_of
from cifar_resnet.files import atomic_output


def ratio_to_classical(frame: pd.DataFrame) -> pd.DataFrame:
    """Per depth: our fastest measured mode on the classical pipeline's cores (rows on other cores are
    not paired), both images/s, and their ratio taken within each round: its median and range, in
    images/s and in images per CPU-second."""
    measured = frame.dropna(subset=["images_per_s"])
    ours = measured[measured["pipeline"] == OURS]
    classical = measured[measured["pipeline"] == CLASSICAL]
    pairs = ours.merge(classical, on=["depth", "cores"], suffixes=("", "_classical"))
    best = pairs.loc[pairs.groupby("depth")["images_per_s"].idxmax()]
    table = pd.DataFrame(
        {
            "depth": best["depth"],
            "cores": best["cores"],
            "best_mode": best["mode"],
            "images_per_s": best["images_per_s"],
            "classical_images_per_s": best["images_per_s_classical"],
        }
    )
    for name, column in (("ratio", "images_per_s_by_round"), ("cpu_ratio", "images_per_cpu_s_by_round")):
        ratios = [round_ratios(row[column], row[f"{column}_classical"]) for _, row in best.iterrows()]
        table = table.assign(**summary(name, ratios))
    return table.reset_index(drop=True)


def round_ratios(numerators: str, denominators: str) -> list[float]:
    """The ratio of two rows' figures in each round they were measured in together."""
    return [top / bottom for top, bottom in zip(rounds_of(numerators), rounds_of(denominators), strict=True)]


def summary(name: str, ratios: list[list[float]]) -> dict[str, list[float]]:
    """Columns ``name`` (the median of each row's ratios), ``name_min`` and ``name_max``."""
    return {
        name: [statistics.median(each) for each in ratios],
        f"{name}_min": [min(each) for each in ratios],
        f"{name}_max": [max(each) for each in ratios],
    }


def sharing_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Per depth, K and cores: the aggregate images/s of K models packed into one step, trained one
    after the other, and trained by K processes at once; which wins, and its margin over the
    runner-up, taken within each round (median and range)."""
    measured = frame[frame["pipeline"].isin([PACKED, SEQUENTIAL, JOBS])].dropna(subset=["images_per_s"])
    measured = measured.assign(K=measured["mode"].str.extract(r"K=(\d+)", expand=False).astype(int))
    keys = ["depth", "K", "cores"]
    table = measured.pivot_table(index=keys, columns="pipeline", values="images_per_s")
    rates = table.reindex(columns=[PACKED, SEQUENTIAL, JOBS])
    by_round = measured.set_index([*keys, "pipeline"])["images_per_s_by_round"].sort_index()
    margins = [margin_over_runner_up(rates.loc[key], by_round.loc[key]) for key in rates.index]
    table = rates.assign(winner=rates.idxmax(axis=1), **summary("margin", margins))
    return table.reset_index().rename_axis(columns=None)


def margin_over_runner_up(rates: pd.Series, by_round: pd.Series) -> list[float]:
    """The winner's figure over the runner-up's in each round (NaN with fewer than two rows)."""
    best_two = rates.dropna().nlargest(2).index
    if len(best_two) < 2:
        return [float("nan")]
    return round_ratios(by_round[best_two[0]], by_round[best_two[1]])


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
    """The rows as a GitHub table with readable numbers: each figure the median over the rounds, with
    its range; rows without figures show their note."""
    shown = frame[["pipeline", "depth", "mode", "batch_size", "cores", "steps"]].assign(
        steps=frame["steps"].map("{:.0f}".format),
        images_per_s=frame["images_per_s"].map("{:,.0f}".format),
        range=frame["images_per_s_min"].map("{:,.0f}".format)
        + "–"
        + frame["images_per_s_max"].map("{:,.0f}".format),
        images_per_cpu_s=frame["images_per_cpu_s"].map("{:,.0f}".format),
        seconds_per_epoch=frame["seconds_per_epoch"].map("{:,.1f}".format),
        peak_memory_mb=frame["peak_memory_mb"].map("{:,.0f}".format),
        note=frame["note"],
    )
    return github_table(shown.replace({"nan": "—", "nan–nan": "—"}))


def sharing_table(frame: pd.DataFrame) -> str:
    shown = sharing_comparison(frame)
    for column in (PACKED, SEQUENTIAL, JOBS):
        shown[column] = shown[column].map("{:,.0f}".format).replace("nan", "—")
    shown["margin"] = ranged(shown, "margin")
    return github_table(shown.drop(columns=["margin_min", "margin_max"]))


def ratio_table(frame: pd.DataFrame) -> str:
    ratios = ratio_to_classical(frame)
    ratios = ratios.assign(
        images_per_s=ratios["images_per_s"].map("{:,.0f}".format),
        classical_images_per_s=ratios["classical_images_per_s"].map("{:,.0f}".format),
        ratio=ranged(ratios, "ratio"),
        cpu_ratio=ranged(ratios, "cpu_ratio"),
    )
    return github_table(ratios.drop(columns=["ratio_min", "ratio_max", "cpu_ratio_min", "cpu_ratio_max"]))


def ranged(table: pd.DataFrame, name: str) -> list[str]:
    """``name``'s median and range as "1.02x (0.98–1.05)", or "—"."""
    return [
        "—" if pd.isna(median) else f"{median:.2f}x ({low:.2f}–{high:.2f})"
        for median, low, high in zip(table[name], table[f"{name}_min"], table[f"{name}_max"], strict=True)
    ]
