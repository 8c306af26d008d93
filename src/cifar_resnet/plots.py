"""The figures of one dataset's runs: error vs depth, learning curves (all variants at one depth, and
each run's own), error vs parameters, a confusion matrix and, for deployed runs, error vs CPU latency.
Every function takes the path of the PNG it writes.

Plots are drawn on Agg figures created without pyplot, so they never touch pyplot's global state and
need no closing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from cifar_resnet.errors import StudyError
from cifar_resnet.files import atomic_output
from cifar_resnet.records import LEARNING_CURVE_COLUMNS
from cifar_resnet.summary import single_dataset
from cifar_resnet.tables import PAPER_TABLE6_ERROR, deployment_statistics

PAPER_LABEL = "He et al. 2016"
DPI = 120
MAX_ANNOTATED_CLASSES = 20
LATENCY_MARKERS = {"float": "o", "INT8": "X"}


@contextmanager
def _plot(path: str | Path, figsize: tuple[float, float]) -> Iterator[Axes]:
    """Yield the axes of a styled figure; save the figure as a PNG at ``path`` when the block succeeds."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        figure = Figure(figsize=figsize, layout="constrained")
        FigureCanvasAgg(figure)
        yield figure.add_subplot()
        with atomic_output(path) as temporary:
            figure.savefig(temporary, format="png", dpi=DPI)


def plot_error_vs_depth(
    summary: pd.DataFrame, path: str | Path, paper_errors: Mapping[int, float] | None = PAPER_TABLE6_ERROR
) -> None:
    """Per variant: each seed's test error as a point and the mean ± std across seeds, depths side by
    side; the paper's numbers (only at depths we ran) as stars beside them."""
    dataset = single_dataset(summary)
    depths = sorted(summary["depth"].unique())
    variants = sorted(summary["variant"].unique())
    groups = len(variants) + (paper_errors is not None)
    offsets = _dodge_offsets(groups, width=0.7)
    colors = palette(len(variants))
    with _plot(path, figsize=(max(7.0, 1.4 * len(depths) + 3), 4.5)) as axes:
        for variant, offset, color in zip(variants, offsets[: len(variants)], colors, strict=True):
            runs = summary[summary["variant"] == variant]
            means = runs.groupby("depth")["test_error"].agg(["mean", "std"])
            _seeds_and_means(
                axes,
                runs["depth"].map(depths.index) + offset,
                runs["test_error"],
                [depths.index(depth) + offset for depth in means.index],
                means,
                color,
                variant,
            )
        if paper_errors is not None:
            paper_depths = [depth for depth in depths if depth in paper_errors]
            axes.scatter(
                [depths.index(depth) + offsets[-1] for depth in paper_depths],
                [paper_errors[depth] for depth in paper_depths],
                color="black",
                marker="*",
                s=140,
                zorder=3,
                label=PAPER_LABEL,
            )
        axes.set_xticks(range(len(depths)), [f"ResNet-{depth}" for depth in depths])
        axes.set_xlim(-0.6, len(depths) - 0.4)
        axes.set(
            xlabel="Depth",
            ylabel="Test error (%)",
            title=f"{dataset}: test error vs depth (dots: seeds, bars: mean ± std)",
        )
        axes.legend(title="Variant", loc="upper left", bbox_to_anchor=(1.01, 1))


def _seeds_and_means(
    axes: Axes, seeds_x, errors: pd.Series, means_x, means: pd.DataFrame, color, label: str
) -> None:
    """One variant in one colour: each seed's test error (``errors`` at ``seeds_x``) as a faint dot, and
    the ``mean`` ± ``std`` columns of ``means`` at ``means_x`` as bars (a single seed's NaN std: none)."""
    axes.scatter(seeds_x, errors, color=color, alpha=0.45, s=18)
    axes.errorbar(
        means_x,
        means["mean"],
        yerr=means["std"].fillna(0),
        color=color,
        marker="o",
        capsize=3,
        label=label,
    )


def _dodge_offsets(groups: int, width: float) -> list[float]:
    """Horizontal offsets that spread ``groups`` markers evenly within ``width`` around a tick."""
    if groups == 1:
        return [0.0]
    step = width / groups
    return [(index - (groups - 1) / 2) * step for index in range(groups)]


def palette(count: int) -> list:
    """Distinct colours for ``count`` series: seaborn's ten, or twenty when the study has more variants."""
    return sns.color_palette("tab10" if count <= 10 else "tab20", n_colors=count)


def curve_depth(summary: pd.DataFrame, depth: int | None) -> int:
    """The depth whose runs the learning curves and the confusion matrix show: ``depth`` (the report's
    option), or the smallest the summary holds."""
    return depth or int(summary["depth"].min())


def learning_curve_runs(summary: pd.DataFrame, depth: int) -> pd.DataFrame:
    """The rows of the runs the learning-curve figure shows: each variant's first seed at ``depth``."""
    at_depth = summary[summary["depth"] == depth]
    return at_depth[at_depth["seed"] == at_depth["seed"].min()]


def confusion_runs(summary: pd.DataFrame, depth: int, baseline: str) -> pd.DataFrame:
    """The rows of the runs whose test confusion matrices are summed: every seed of the ``baseline``
    variant at ``depth``, or of the first variant there when the baseline has none."""
    at_depth = summary[summary["depth"] == depth]
    shown = at_depth[at_depth["variant"] == baseline]
    return shown if len(shown) else at_depth[at_depth["variant"] == at_depth["variant"].iloc[0]]


def plot_learning_curves(histories: Mapping[str, pd.DataFrame], path: str | Path) -> None:
    """Train (dashed) and validation (solid) error per epoch; one colour per labelled run."""
    if not histories:
        raise StudyError("There are no training histories to plot; check the runs selected for the plot.")
    curves = pd.concat([_error_curves(label, history) for label, history in histories.items()])
    with _plot(path, figsize=(8.5, 4.5)) as axes:
        sns.lineplot(
            data=curves,
            x="epoch",
            y="error",
            hue="Run",
            palette=palette(len(histories)),
            style="Split",
            style_order=["validation", "train"],
            estimator=None,
            ax=axes,
        )
        axes.set(xlabel="Epoch", ylabel="Error (%)", title="Learning curves")
        axes.set_ylim(bottom=0)
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1))


def plot_run_curve(
    history: pd.DataFrame, path: str | Path, title: str, selected_epoch: int, test_error: float
) -> None:
    """One run's train (dashed) and validation (solid) error per epoch, the epoch whose model was selected
    (vertical line) and the selected model's test error (horizontal line)."""
    curves = _error_curves(title, history)
    with _plot(path, figsize=(6.5, 3.8)) as axes:
        for split, style in (("validation", "-"), ("train", "--")):
            curve = curves[curves["Split"] == split]
            axes.plot(curve["epoch"], curve["error"], style, label=f"{split} error")
        axes.axvline(selected_epoch, color="grey", linewidth=1, label=f"selected: epoch {selected_epoch}")
        axes.axhline(
            test_error, color="black", linestyle=":", linewidth=1, label=f"test error {test_error:.2f} %"
        )
        axes.set(xlabel="Epoch", ylabel="Error (%)", title=title)
        axes.set_ylim(bottom=0)
        axes.legend(loc="upper right")


def _error_curves(label: str, history: pd.DataFrame) -> pd.DataFrame:
    missing = set(LEARNING_CURVE_COLUMNS) - set(history.columns)
    if missing:
        raise StudyError(f"The history of {label} lacks {', '.join(sorted(missing))}; rerun its training.")
    return pd.concat(
        pd.DataFrame(
            {"epoch": history["epoch"], "error": 100 * (1 - history[column]), "Split": split, "Run": label}
        )
        for split, column in (("train", "train_accuracy"), ("validation", "val_accuracy"))
    )


def plot_error_vs_params(summary: pd.DataFrame, path: str | Path) -> None:
    """Test error against parameter count (log scale): seeds as dots, mean ± std per depth and variant."""
    dataset = single_dataset(summary)
    variants = sorted(summary["variant"].unique())
    colors = palette(len(variants))
    with _plot(path, figsize=(7.5, 4.5)) as axes:
        for variant, color in zip(variants, colors, strict=True):
            runs = summary[summary["variant"] == variant]
            means = runs.groupby("depth").agg(
                params=("params", "first"), mean=("test_error", "mean"), std=("test_error", "std")
            )
            _seeds_and_means(axes, runs["params"], runs["test_error"], means["params"], means, color, variant)
            for depth, row in means.iterrows():
                axes.annotate(
                    f"{depth}", (row["params"], row["mean"]), textcoords="offset points", xytext=(4, 4)
                )
        axes.set_xscale("log")
        axes.set(
            xlabel="Parameters (log scale)",
            ylabel="Test error (%)",
            title=f"{dataset}: test error vs parameters (labels: depth)",
        )
        axes.legend(title="Variant", loc="upper left", bbox_to_anchor=(1.01, 1))


def plot_confusion_matrix(matrix, class_names: Sequence[str], path: str | Path, title: str) -> None:
    """Heatmap of counts (rows true class, columns predicted), annotated for at most 20 classes."""
    counts = np.asarray(matrix)
    classes = len(class_names)
    if counts.shape != (classes, classes):
        raise StudyError(
            f"The confusion matrix is {counts.shape[0]}×{counts.shape[-1]} but there are {classes} class"
            " names; evaluate the run again."
        )
    annotate = classes <= MAX_ANNOTATED_CLASSES
    side = max(6.0, 0.6 * classes + 2) if annotate else max(10.0, 0.16 * classes + 2)
    with _plot(path, figsize=(side, side * 0.85)) as axes:
        sns.heatmap(
            counts,
            annot=annotate,
            fmt="d",
            cmap="Blues",
            square=True,
            xticklabels=list(class_names),
            yticklabels=list(class_names),
            cbar_kws={"label": "Test images"},
            ax=axes,
        )
        axes.set(xlabel="Predicted class", ylabel="True class", title=title)


def plot_error_vs_latency(summary: pd.DataFrame, path: str | Path) -> None:
    """Test error against batch-1 CPU latency (log scale) of a deployed summary, each variant and depth at
    its mean over seeds: the float model as a dot, the INT8 model (where there is one) as a cross, labelled
    with the depth; the Pareto front of all these points as a black step line."""
    dataset = single_dataset(summary)
    points = latency_points(summary)
    front = points.iloc[pareto_front(list(zip(points["latency_ms"], points["error"], strict=True)))]
    variants = sorted(summary["variant"].unique())
    with _plot(path, figsize=(8.5, 4.5)) as axes:
        axes.step(
            front["latency_ms"],
            front["error"],
            where="post",
            color="black",
            linewidth=1,
            label="Pareto front",
        )
        sns.scatterplot(
            data=points,
            x="latency_ms",
            y="error",
            hue="Variant",
            hue_order=variants,
            palette=palette(len(variants)),
            style="Model",
            style_order=[model for model in LATENCY_MARKERS if model in set(points["Model"])],
            markers=LATENCY_MARKERS,
            s=60,
            zorder=3,
            ax=axes,
        )
        for point in points.itertuples():
            axes.annotate(
                f"{point.depth}",
                (point.latency_ms, point.error),
                textcoords="offset points",
                xytext=(3, 3),
                fontsize="x-small",
                color="dimgray",
            )
        axes.set_xscale("log")
        # Milliseconds as plain numbers on a 1-2-5 scale (0.2, 0.5, 1, 2), not as powers of ten.
        axes.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda milliseconds, _: f"{milliseconds:g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set(
            xlabel="CPU latency, batch 1 (ms, log scale)",
            ylabel="Test error (%)",
            title=f"{dataset}: test error vs CPU latency (labels: depth)",
        )
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1))


def latency_points(summary: pd.DataFrame) -> pd.DataFrame:
    """The points of ``plot_error_vs_latency``: Variant, depth, Model ("float" or "INT8"), latency_ms and
    error, the means over seeds of each model's batch-1 latency and test error; no INT8 point without INT8."""
    means = deployment_statistics(summary).merge(
        summary.groupby(["depth", "variant"], as_index=False)["test_error"].mean()
    )
    models = {"float": ("onnx_b1_ms", "test_error"), "INT8": ("int8_b1_ms", "int8_mean_error")}
    points = pd.concat(
        pd.DataFrame(
            {
                "Variant": means["variant"],
                "depth": means["depth"],
                "Model": model,
                "latency_ms": means[latency].astype(float),
                "error": means[error].astype(float),
            }
        )
        for model, (latency, error) in models.items()
    )
    return points.dropna(subset=["latency_ms", "error"]).reset_index(drop=True)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """The indices of the (latency, error) ``points`` that no other point dominates (is as low on both and
    lower on one), by increasing latency; equal points are all kept."""

    def dominated(point: tuple[float, float]) -> bool:
        return any(other != point and other[0] <= point[0] and other[1] <= point[1] for other in points)

    front = [index for index, point in enumerate(points) if not dominated(point)]
    return sorted(front, key=lambda index: points[index])
