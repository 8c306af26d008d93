"""Results of the study: the per-run summary, accuracy tables, the README's results block and plots.

Significance markers in the accuracy table (``accuracy_table``): every variant is compared with the
``baseline`` variant (``paper`` by default) at the same depth by Welch's t-test on the per-seed test
errors.

* ``(ns)``: not significantly different from the baseline at this depth (Welch's t-test, p ≥ alpha,
  alpha = 0.05 by default); also used when both sides have identical seeds, where the test gives no p.
* ``(n<2)``: too few seeds to test, fewer than two on this row or on the baseline at this depth.
* no marker: significantly different from the baseline, or the baseline row itself.

Plots are drawn on Agg figures created without pyplot, so they never touch pyplot's global state and
need no closing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tabulate import tabulate

from cifar_resnet.errors import StudyError
from cifar_resnet.files import atomic_output, read_json

# He et al. 2016, Table 6: CIFAR-10 test error (%). ResNet-110 is the best of 5 runs (mean 6.61 ± 0.16).
PAPER_TABLE6_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PAPER_LABEL = "He et al. 2016"

TRAIN_FIELDS = (
    "dataset",
    "variant",
    "depth",
    "seed",
    "train_seconds",
    "epochs",
    "iterations",
    "selected_epoch",
    "selected_val_accuracy",
    "device",
)
EVAL_FIELDS = ("test_accuracy", "test_error", "test_loss", "params", "macs", "inference_images_per_s")
SUMMARY_COLUMNS = (
    "dataset",
    "variant",
    "depth",
    "seed",
    "test_accuracy",
    "test_error",
    "test_loss",
    "params",
    "macs",
    "train_seconds",
    "epochs",
    "iterations",
    "selected_epoch",
    "selected_val_accuracy",
    "device",
    "inference_images_per_s",
)
RUN_KEY = ["dataset", "variant", "depth", "seed"]

NOT_SIGNIFICANT = "ns"
TOO_FEW_SEEDS = "n<2"
DASH = "—"
DPI = 120
MAX_ANNOTATED_CLASSES = 20


# --- per-run summary ---------------------------------------------------------------------------


def summarize_runs(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """One row per run directory (its train.json and eval.json), sorted by dataset, depth, variant, seed."""
    if not run_dirs:
        raise StudyError("There are no runs to summarize; check that the config lists variants and seeds.")
    rows = []
    for run_dir in map(Path, run_dirs):
        row = read_fields(run_dir / "train.json", TRAIN_FIELDS) | read_fields(
            run_dir / "eval.json", EVAL_FIELDS
        )
        rows.append(row)
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    duplicated = summary[summary.duplicated(RUN_KEY, keep=False)]
    if not duplicated.empty:
        first = duplicated.iloc[0]
        raise StudyError(
            f"Several run directories hold the run {first.dataset}/{first.variant}/ResNet-{first.depth}"
            f"/seed {first.seed}; each run must be summarized once."
        )
    return summary.sort_values(["dataset", "depth", "variant", "seed"], ignore_index=True)


def read_fields(path: Path, fields: Sequence[str]) -> dict:
    """``fields`` of a run's JSON file, or one sentence on what is wrong with it."""
    try:
        record = read_json(path)
    except FileNotFoundError:
        raise StudyError(f"{path} is missing; run that run's training and evaluation first.") from None
    except json.JSONDecodeError as error:
        raise StudyError(f"{path} is not valid JSON ({error}); delete it and rerun its step.") from None
    missing = [field for field in fields if field not in record]
    if missing:
        raise StudyError(f"{path} lacks {', '.join(missing)}; rerun the step that writes it.")
    return {field: record[field] for field in fields}


# --- accuracy table ----------------------------------------------------------------------------


def error_statistics(
    summary: pd.DataFrame,
    baseline: str = "paper",
    paper_errors: Mapping[int, float] | None = PAPER_TABLE6_ERROR,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """The numbers behind ``accuracy_table``: one row per (depth, variant) of one dataset's summary.

    Columns: depth, variant, n, mean_error, std_error (ddof=1, NaN for one seed), rank (1 = lowest
    mean error within the depth), p_value (Welch's t-test against the baseline, NaN where untested),
    significance ("baseline", "significant", "ns" or "n<2"), params, macs, train_seconds (mean) and,
    when ``paper_errors`` is given, paper_error and delta_vs_paper (NaN where the paper has no number).
    Sorted by depth, then rank, then variant.
    """
    _single_dataset(summary)
    if baseline not in set(summary["variant"]):
        variants = ", ".join(sorted(set(summary["variant"])))
        raise StudyError(f"The baseline variant '{baseline}' has no runs; choose one of: {variants}.")
    grouped = summary.groupby(["depth", "variant"])
    statistics = grouped.agg(
        n=("test_error", "size"),
        mean_error=("test_error", "mean"),
        std_error=("test_error", "std"),
        params=("params", "first"),
        macs=("macs", "first"),
        train_seconds=("train_seconds", "mean"),
    ).reset_index()
    # Ranked as displayed (2 decimals), so float noise cannot split means that the table shows as equal.
    shown_means = statistics["mean_error"].round(2)
    statistics["rank"] = shown_means.groupby(statistics["depth"]).rank(method="min").astype(int)
    tests = [
        _compare_with_baseline(summary, depth, variant, baseline, alpha)
        for depth, variant in zip(statistics["depth"], statistics["variant"], strict=True)
    ]
    statistics["p_value"] = [p_value for p_value, _ in tests]
    statistics["significance"] = [significance for _, significance in tests]
    if paper_errors is not None:
        statistics["paper_error"] = statistics["depth"].map(lambda depth: paper_errors.get(depth, math.nan))
        statistics["delta_vs_paper"] = statistics["mean_error"] - statistics["paper_error"]
    return statistics.sort_values(["depth", "rank", "variant"], ignore_index=True)


def _compare_with_baseline(
    summary: pd.DataFrame, depth: int, variant: str, baseline: str, alpha: float
) -> tuple[float, str]:
    if variant == baseline:
        return math.nan, "baseline"
    at_depth = summary[summary["depth"] == depth]
    errors = at_depth.loc[at_depth["variant"] == variant, "test_error"].to_numpy(float)
    baseline_errors = at_depth.loc[at_depth["variant"] == baseline, "test_error"].to_numpy(float)
    if len(errors) < 2 or len(baseline_errors) < 2:
        return math.nan, TOO_FEW_SEEDS
    # Imported on first use: scipy.stats is slow to import and only this test needs it.
    from scipy import stats

    p_value = float(stats.ttest_ind(errors, baseline_errors, equal_var=False).pvalue)
    # Identical seeds on both sides give p = NaN: nothing distinguishes them, so "ns".
    return p_value, "significant" if p_value < alpha else NOT_SIGNIFICANT


def accuracy_table(
    summary: pd.DataFrame,
    baseline: str = "paper",
    paper_errors: Mapping[int, float] | None = PAPER_TABLE6_ERROR,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """The display table of one dataset's runs (all cells strings); see the module docstring for markers."""
    statistics = error_statistics(summary, baseline, paper_errors, alpha)
    table = pd.DataFrame(
        {
            "Depth": [f"ResNet-{depth}" for depth in statistics["depth"]],
            "Variant": statistics["variant"],
            "n": statistics["n"].astype(str),
            "Test error %": [_format_error(row) for row in statistics.itertuples()],
            "Rank": statistics["rank"].astype(str),
        }
    )
    if paper_errors is not None:
        table["Paper %"] = statistics["paper_error"].map(_format_number)
        table["Δ vs paper"] = statistics["delta_vs_paper"].map(lambda delta: _format_number(delta, "+.2f"))
    table["Params"] = statistics["params"].map(lambda params: format_count(params, decimals=2))
    table["MACs"] = statistics["macs"].map(lambda macs: format_count(macs, decimals=1))
    table["Train time"] = statistics["train_seconds"].map(format_duration)
    return table


def _format_error(row) -> str:
    spread = DASH if row.n == 1 else f"{row.std_error:.2f}"
    marker = f" ({row.significance})" if row.significance in (NOT_SIGNIFICANT, TOO_FEW_SEEDS) else ""
    return f"{row.mean_error:.2f} ± {spread}{marker}"


def _format_number(value: float, spec: str = ".2f") -> str:
    return DASH if math.isnan(value) else format(value, spec)


def format_count(count: float, decimals: int) -> str:
    """Millions with ``decimals`` places ("0.27M", "40.8M"); thousands when that would show as zero."""
    if count >= 10 ** (6 - decimals):
        return f"{count / 1e6:.{decimals}f}M"
    return f"{count / 1e3:.1f}K"


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render_markdown(table: pd.DataFrame) -> str:
    # disable_numparse keeps cells such as "7.10" as written instead of reformatting them as numbers.
    return tabulate(table, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)


def variant_table(variants: Mapping[str, Mapping]) -> str:
    """Markdown table of the variants in the given order: Variant | What it changes | From."""
    rows = []
    for name, variant in variants.items():
        missing = [key for key in ("description", "source") if key not in variant]
        if missing:
            raise StudyError(f"The variant '{name}' lacks {' and '.join(missing)}; add it to its config.")
        rows.append([f"`{name}`", _table_cell(variant["description"]), _table_cell(variant["source"])])
    return tabulate(
        rows, headers=["Variant", "What it changes", "From"], tablefmt="github", disable_numparse=True
    )


def _table_cell(text: str) -> str:
    # Config descriptions may span lines (YAML block scalars) or hold "|", which would split the cell.
    return " ".join(str(text).split()).replace("|", "\\|")


# --- README ------------------------------------------------------------------------------------


def splice_readme(
    readme: Path, block: str, start: str = "<!-- results:start -->", end: str = "<!-- results:end -->"
) -> None:
    """Replace the lines between the ``start`` and ``end`` marker lines (markers kept) with ``block``."""
    readme = Path(readme)
    try:
        lines = readme.read_bytes().decode("utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        raise StudyError(f"{readme} does not exist; create it with the results markers first.") from None
    start_index = _marker_line(lines, start, readme)
    end_index = _marker_line(lines, end, readme)
    if end_index < start_index:
        raise StudyError(f"{readme} has the marker '{end}' before '{start}'; put the end marker last.")
    if block and not block.endswith("\n"):
        block += "\n"
    spliced = "".join(lines[: start_index + 1]) + block + "".join(lines[end_index:])
    with atomic_output(readme) as temporary:
        temporary.write_bytes(spliced.encode("utf-8"))


def _marker_line(lines: Sequence[str], marker: str, readme: Path) -> int:
    indices = [index for index, line in enumerate(lines) if line.strip() == marker]
    if len(indices) != 1:
        found = "lacks" if not indices else f"has {len(indices)} lines of"
        raise StudyError(f"{readme} {found} the marker '{marker}'; it needs exactly one such line.")
    return indices[0]


# --- plots -------------------------------------------------------------------------------------


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
    dataset = _single_dataset(summary)
    depths = sorted(summary["depth"].unique())
    variants = sorted(summary["variant"].unique())
    groups = len(variants) + (paper_errors is not None)
    offsets = _dodge_offsets(groups, width=0.7)
    colors = palette(len(variants))
    with _plot(path, figsize=(max(7.0, 1.4 * len(depths) + 3), 4.5)) as axes:
        for variant, offset, color in zip(variants, offsets[: len(variants)], colors, strict=True):
            runs = summary[summary["variant"] == variant]
            seed_positions = runs["depth"].map(depths.index) + offset
            axes.scatter(seed_positions, runs["test_error"], color=color, alpha=0.45, s=18)
            means = runs.groupby("depth")["test_error"].agg(["mean", "std"])
            axes.errorbar(
                [depths.index(depth) + offset for depth in means.index],
                means["mean"],
                yerr=means["std"].fillna(0),
                color=color,
                marker="o",
                capsize=3,
                label=variant,
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


def _dodge_offsets(groups: int, width: float) -> list[float]:
    """Horizontal offsets that spread ``groups`` markers evenly within ``width`` around a tick."""
    if groups == 1:
        return [0.0]
    step = width / groups
    return [(index - (groups - 1) / 2) * step for index in range(groups)]


def palette(count: int) -> list:
    """Distinct colours for ``count`` series: seaborn's ten, or twenty when the study has more variants."""
    return sns.color_palette("tab10" if count <= 10 else "tab20", n_colors=count)


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


def _error_curves(label: str, history: pd.DataFrame) -> pd.DataFrame:
    missing = {"epoch", "train_accuracy", "val_accuracy"} - set(history.columns)
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
    dataset = _single_dataset(summary)
    variants = sorted(summary["variant"].unique())
    colors = palette(len(variants))
    with _plot(path, figsize=(7.5, 4.5)) as axes:
        for variant, color in zip(variants, colors, strict=True):
            runs = summary[summary["variant"] == variant]
            axes.scatter(runs["params"], runs["test_error"], color=color, alpha=0.45, s=18)
            means = runs.groupby("depth").agg(
                params=("params", "first"), mean=("test_error", "mean"), std=("test_error", "std")
            )
            axes.errorbar(
                means["params"],
                means["mean"],
                yerr=means["std"].fillna(0),
                color=color,
                marker="o",
                capsize=3,
                label=variant,
            )
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


def _single_dataset(summary: pd.DataFrame) -> str:
    datasets = sorted(set(summary["dataset"]))
    if len(datasets) != 1:
        found = ", ".join(datasets) if datasets else "none"
        raise StudyError(f"Expected the runs of exactly one dataset, found: {found}.")
    return datasets[0]


# --- README results block ----------------------------------------------------------------------

PLOT_NAMES = ("error_vs_depth", "learning_curves", "error_vs_params", "confusion_matrix")
DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "demo": "Demo dataset"}


def results_block(datasets: Sequence[str], tables: Sequence[Path]) -> str:
    """The README's results: each dataset's accuracy table followed by links to its plots."""
    sections = []
    for dataset, table in zip(datasets, tables, strict=True):
        links = " · ".join(
            f"[{name.replace('_', ' ')}](results/{dataset}/plots/{name}.png)" for name in PLOT_NAMES
        )
        title = DATASET_TITLES.get(dataset, dataset)
        sections.append(f"### {title}\n\n{Path(table).read_text().strip()}\n\nPlots: {links}\n")
    return "\n".join(sections)
