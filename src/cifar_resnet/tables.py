"""The accuracy table of one dataset's runs: mean ± std test error per depth and variant, ranks,
significance against a baseline and the paper's numbers, parameters, MACs and training time; for
deployed runs also the batch-1 CPU latency of the ONNX model, the INT8 model's test error and the
float and INT8 model files' sizes.

Significance markers in the accuracy table (``accuracy_table``): every variant is compared with the
``baseline`` variant (``paper`` by default) at the same depth by Welch's t-test on the per-seed test
errors.

* ``(ns)``: not significantly different from the baseline at this depth (Welch's t-test, p ≥ alpha,
  alpha = 0.05 by default); also used when both sides have identical seeds, where the test gives no p.
* ``(n<2)``: too few seeds to test, fewer than two on this row or on the baseline at this depth.
* no marker: significantly different from the baseline, or the baseline row itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
from tabulate import tabulate

from cifar_resnet.errors import StudyError
from cifar_resnet.summary import has_deployment, single_dataset

# He et al. 2016, Table 6: CIFAR-10 test error (%). ResNet-110 is the best of 5 runs (mean 6.61 ± 0.16).
PAPER_TABLE6_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}

NOT_SIGNIFICANT = "ns"
TOO_FEW_SEEDS = "n<2"
DASH = "—"


def error_statistics(
    summary: pd.DataFrame,
    baseline: str = "paper",
    paper_errors: Mapping[int, float] | None = PAPER_TABLE6_ERROR,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """The numbers behind ``accuracy_table``: one row per (depth, variant) of one dataset's summary.

    Columns: depth, variant, n, mean_error, std_error (ddof=1, NaN for one seed), rank (1 = lowest
    mean error within the depth), p_value (Welch's t-test against the baseline, NaN where untested),
    significance ("baseline", "significant", "ns" or "n<2"), params, macs, train_seconds (mean), when
    ``paper_errors`` is given paper_error and delta_vs_paper (NaN where the paper has no number), and
    when the summary holds the runs' deployment the columns of ``deployment_statistics``.
    Sorted by depth, then rank, then variant.
    """
    single_dataset(summary)
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
    if has_deployment(summary):
        statistics = statistics.merge(deployment_statistics(summary), on=["depth", "variant"])
    return statistics.sort_values(["depth", "rank", "variant"], ignore_index=True)


def deployment_statistics(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (depth, variant) of a deployed summary, means over seeds: onnx_bytes, int8_bytes, onnx_b1_ms,
    int8_b1_ms and int8_mean_error, with int8_std_error (ddof=1); the INT8 columns are NaN without INT8."""
    return (
        summary.groupby(["depth", "variant"])
        .agg(
            onnx_bytes=("onnx_bytes", "mean"),
            int8_bytes=("int8_bytes", "mean"),
            onnx_b1_ms=("onnx_b1_ms", "mean"),
            int8_b1_ms=("int8_b1_ms", "mean"),
            int8_mean_error=("int8_test_error", "mean"),
            int8_std_error=("int8_test_error", "std"),
        )
        .reset_index()
    )


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
    if has_deployment(summary):
        table["CPU ms (b=1)"] = statistics["onnx_b1_ms"].map(_format_number)
        table["INT8 error %"] = [
            DASH if math.isnan(mean) else _mean_and_spread(mean, std)
            for mean, std in zip(statistics["int8_mean_error"], statistics["int8_std_error"], strict=True)
        ]
        table["Size"] = [
            f"{format_bytes(onnx)} / {DASH if math.isnan(int8) else format_bytes(int8)}"
            for onnx, int8 in zip(statistics["onnx_bytes"], statistics["int8_bytes"], strict=True)
        ]
    return table


def _format_error(row) -> str:
    marker = f" ({row.significance})" if row.significance in (NOT_SIGNIFICANT, TOO_FEW_SEEDS) else ""
    return f"{_mean_and_spread(row.mean_error, row.std_error)}{marker}"


def _mean_and_spread(mean: float, std: float) -> str:
    """Mean ± std with 2 decimals; a single seed's std (NaN) shows as a dash."""
    spread = DASH if math.isnan(std) else f"{std:.2f}"
    return f"{mean:.2f} ± {spread}"


def _format_number(value: float, spec: str = ".2f") -> str:
    return DASH if math.isnan(value) else format(value, spec)


def format_count(count: float, decimals: int) -> str:
    """Millions with ``decimals`` places ("0.27M", "40.8M"); thousands when that would show as zero."""
    if count >= 10 ** (6 - decimals):
        return f"{count / 1e6:.{decimals}f}M"
    return f"{count / 1e3:.1f}K"


def format_bytes(size: float) -> str:
    """Megabytes (10^6 bytes) with two significant digits, whole from 10 MB ("0.37 MB", "1.1 MB", "108 MB");
    kilobytes below 10 kB."""
    value, unit = (size / 1e6, "MB") if size >= 10_000 else (size / 1e3, "kB")
    decimals = max(0, 1 - math.floor(math.log10(value)))
    return f"{value:.{decimals}f} {unit}"


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render_markdown(table: pd.DataFrame) -> str:
    # disable_numparse keeps cells such as "7.10" as written instead of reformatting them as numbers.
    return tabulate(table, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)
