"""The accuracy table of one dataset as GitHub Markdown."""

import pandas as pd

from cifar_resnet.files import write_text
from cifar_resnet.tables import PAPER_TABLE6_ERROR, accuracy_table, render_markdown
from cifar_resnet.workflow import run_job


def table():
    summary = pd.read_csv(snakemake.input[0])
    paper = PAPER_TABLE6_ERROR if snakemake.params.paper_reference else None
    table = accuracy_table(summary, snakemake.params.baseline, paper, snakemake.params.alpha)
    write_text(snakemake.output[0], render_markdown(table))


run_job(snakemake, table)
