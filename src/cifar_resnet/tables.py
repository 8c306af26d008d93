"""The accuracy table of one dataset's runs: mean ± std test error per depth and variant, its 95 %
confidence interval, ranks, significance against a baseline and the paper's numbers, parameters, MACs
and training time; for deployed runs also the batch-1 CPU latency of the ONNX model, the INT8 model's
test error and the float and INT8 model files' sizes.

Significance (``error_statistics``): every variant is compared with the ``baseline`` variant (``paper``
by default) at the same depth by Welch's t-test on the per-seed test errors, and the p-values of all the
table's comparisons (every depth) are adjusted together by Holm's step-down procedure (Holm 1979). Holm
rather than a false-discovery-rate procedure because each mark is read as a claim of its own ("this
variant differs from paper at this depth"), so the chance that any mark of the table is wrong is what
must stay below alpha; and Holm holds under any dependence between the tests, which share their
baseline's seeds. Markers in the table:

* ``(ns)``: not significantly different from the baseline at this depth (Holm-adjusted p ≥ alpha, alpha =
  0.05 by default); also when both sides have identical seeds, where Welch's test gives no p (taken as 1).
* ``(n<2)``: too few seeds to test, fewer than two on this row or on the baseline at this depth.
* no marker: significantly different from the baseline, or the baseline row itself.

The confidence interval of a mean over n seeds is t-based: mean ± t(0.975, n - 1) · std / √n.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping

import numpy as np
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

    Columns: depth, variant, n, mean_error, std_error (ddof=1, NaN for one seed), params, macs,
    train_seconds (mean), rank (1 = lowest mean error within the depth), ci_low and ci_high (the mean's
    95 % confidence interval, NaN for one seed), p_value (Welch's t-test against the baseline, NaN where
    untested), p_holm (Holm-adjusted over the whole table), significance ("baseline", "significant",
    "ns" or "n<2"; from p_holm), when
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
    statistics["ci_low"], statistics["ci_high"] = confidence_interval(
        statistics["mean_error"], statistics["std_error"], statistics["n"]
    )
    statistics["p_value"] = [
        _welch_p_value(summary, depth, variant, baseline)
        for depth, variant in zip(statistics["depth"], statistics["variant"], strict=True)
    ]
    statistics["p_holm"] = holm_adjusted(statistics["p_value"])
    statistics["significance"] = [
        _significance(variant == baseline, p_holm, alpha)
        for variant, p_holm in zip(statistics["variant"], statistics["p_holm"], strict=True)
    ]
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


def confidence_interval(mean: pd.Series, std: pd.Series, n: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The t-based 95 % confidence interval of each mean over n seeds (std with ddof=1): NaN for one seed."""
    # Imported on first use: scipy.stats is slow to import and the plots, which import this module, need
    # none of it.
    from scipy import stats

    tested = n >= 2
    half_width = pd.Series(math.nan, index=mean.index)
    half_width[tested] = stats.t.ppf(0.975, n[tested] - 1) * std[tested] / np.sqrt(n[tested])
    return mean - half_width, mean + half_width


def holm_adjusted(p_values: pd.Series) -> pd.Series:
    """Holm's adjustment of the tested p-values (the non-NaN ones) as one family; NaN stays NaN."""
    from statsmodels.stats.multitest import multipletests

    adjusted = pd.Series(math.nan, index=p_values.index)
    tested = p_values.notna()
    if tested.any():
        adjusted[tested] = multipletests(p_values[tested], method="holm")[1]
    return adjusted


def _welch_p_value(summary: pd.DataFrame, depth: int, variant: str, baseline: str) -> float:
    """Welch's t-test of the variant's per-seed errors against the baseline's at the depth; NaN where
    nothing is tested (the baseline itself, or fewer than two seeds on either side)."""
    if variant == baseline:
        return math.nan
    at_depth = summary[summary["depth"] == depth]
    errors = at_depth.loc[at_depth["variant"] == variant, "test_error"].to_numpy(float)
    baseline_errors = at_depth.loc[at_depth["variant"] == baseline, "test_error"].to_numpy(float)
    if len(errors) < 2 or len(baseline_errors) < 2:
        return math.nan
    from scipy import stats

    p_value = float(stats.ttest_ind(errors, baseline_errors, equal_var=False).pvalue)
    # Identical seeds on both sides give p = NaN: nothing distinguishes them.
    return 1.0 if math.isnan(p_value) else p_value


def _significance(is_baseline: bool, p_holm: float, alpha: float) -> str:
    if is_baseline:
        return "baseline"
    if math.isnan(p_holm):
        return TOO_FEW_SEEDS
    return "significant" if p_holm < alpha else NOT_SIGNIFICANT


def accuracy_table(
    summary: pd.DataFrame,
    baseline: str = "paper",
    paper_errors: Mapping[int, float] | None = PAPER_TABLE6_ERROR,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """The display table of one dataset's runs (all cells strings); see the module docstring for markers."""
    return format_table(error_statistics(summary, baseline, paper_errors, alpha))


def format_table(statistics: pd.DataFrame) -> pd.DataFrame:
    """``error_statistics`` as the display table: the paper's columns where it holds them, the deployment's
    where it holds those."""
    table = pd.DataFrame(
        {
            "Depth": [f"ResNet-{depth}" for depth in statistics["depth"]],
            "Variant": statistics["variant"],
            "n": statistics["n"].astype(str),
            "Test error %": [_format_error(row) for row in statistics.itertuples()],
            "95% CI": [
                DASH if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"
                for low, high in zip(statistics["ci_low"], statistics["ci_high"], strict=True)
            ],
            "p (Holm)": statistics["p_holm"].map(format_p_value),
            "Rank": statistics["rank"].astype(str),
        }
    )
    if "paper_error" in statistics:
        table["Paper %"] = statistics["paper_error"].map(_format_number)
        table["Δ vs paper"] = statistics["delta_vs_paper"].map(lambda delta: _format_number(delta, "+.2f"))
    table["Params"] = statistics["params"].map(lambda params: format_count(params, decimals=2))
    table["MACs"] = statistics["macs"].map(lambda macs: format_count(macs, decimals=1))
    table["Train time"] = statistics["train_seconds"].map(format_duration)
    if "onnx_b1_ms" in statistics:
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


def format_p_value(p_value: float) -> str:
    """Three decimals, "<0.001" below that, a dash where nothing was tested."""
    if math.isnan(p_value):
        return DASH
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


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


def render_html(table: pd.DataFrame, title: str) -> str:
    """The table as a self-contained HTML page (inline style), which Snakemake's report shows inline."""
    body = table.to_html(index=False, border=0, classes="accuracy", escape=True)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; font-size: 13px; margin: 12px; }}
table.accuracy {{ border-collapse: collapse; }}
th, td {{ padding: 3px 8px; border-bottom: 1px solid #ddd; white-space: nowrap; }}
table.accuracy th {{ background: #f3f3f3; text-align: left; position: sticky; top: 0; }}
table.accuracy td {{ text-align: right; font-variant-numeric: tabular-nums; }}
table.accuracy td:nth-child(-n+2) {{ text-align: left; }}
</style>
</head>
<body>
<h3>{html.escape(title)}</h3>
{body}
</body>
</html>
"""


def render_markdown(table: pd.DataFrame) -> str:
    # disable_numparse keeps cells such as "7.10" as written instead of reformatting them as numbers.
    return tabulate(table, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)
