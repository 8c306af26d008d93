"""The accuracy table of one dataset: its numbers as CSV, the table as GitHub Markdown (for the README)
and as HTML (for the report)."""

from cifar_resnet.files import write_csv, write_text
from cifar_resnet.summary import read_summary
from cifar_resnet.tables import (
    PAPER_TABLE6_ERROR,
    error_statistics,
    format_table,
    render_html,
    render_markdown,
)
from cifar_resnet.workflow import run_job


def table():
    summary = read_summary(snakemake.input[0])
    paper = PAPER_TABLE6_ERROR if snakemake.params.paper_reference else None
    statistics = error_statistics(summary, snakemake.params.baseline, paper, snakemake.params.alpha)
    write_csv(snakemake.output.statistics, statistics)
    table = format_table(statistics)
    write_text(snakemake.output.markdown, render_markdown(table))
    write_text(snakemake.output.html, render_html(table, f"Test error on {snakemake.wildcards.dataset}"))


run_job(snakemake, table)
