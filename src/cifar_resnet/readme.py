"""The README's generated parts: the variant table and the results block, spliced between marker lines."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

from tabulate import tabulate

from cifar_resnet.errors import StudyError
from cifar_resnet.files import atomic_output
from cifar_resnet.sources import DATASET_TITLES


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
    # Config descriptions may span lines (YAML block scalars) or hold "|", which would split the cell, or
    # HTML, which Markdown would pass through as markup: they are shown as written.
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


VARIANTS_MARKERS = ("<!-- variants:start -->", "<!-- variants:end -->")
RESULTS_MARKERS = ("<!-- results:start -->", "<!-- results:end -->")


def splices_readme(setting: bool | str, workflow_root: Path, datasets: Sequence[str]) -> bool:
    """Whether the workflow splices its results block into README.md: where ``setting``
    (report.update_readme) is true, or "auto" and the workflow runs in its own clone (``workflow_root``,
    the folder above workflow/, is the working folder), never into the folder of a deployment (a module,
    or -s); and only for a study of real ``datasets``."""
    own_clone = Path(workflow_root).resolve() == Path.cwd().resolve()
    return (setting is True or (setting == "auto" and own_clone)) and bool(datasets)


def update_readme(readme: Path, blocks: Mapping[tuple[str, str], str]) -> None:
    """Splice each block between its (start, end) markers: every marker is checked and the whole new
    README built before it is written, once, so the README changes whole or not at all."""
    readme = Path(readme)
    lines = _readme_lines(readme)
    for (start, end), block in blocks.items():
        lines = _spliced(lines, block, start, end, readme)
    with atomic_output(readme) as temporary:
        temporary.write_bytes("".join(lines).encode("utf-8"))


def check_markers(
    readme: Path, markers: Sequence[tuple[str, str]] = (VARIANTS_MARKERS, RESULTS_MARKERS)
) -> None:
    """Refuse, in one sentence, a README whose ``markers`` ``update_readme`` could not splice."""
    lines = _readme_lines(Path(readme))
    for start, end in markers:
        _spliced(lines, "", start, end, Path(readme))


def _readme_lines(readme: Path) -> list[str]:
    try:
        return readme.read_bytes().decode("utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        raise StudyError(f"{readme} does not exist; create it with the results markers first.") from None


def _spliced(lines: Sequence[str], block: str, start: str, end: str, readme: Path) -> list[str]:
    start_index = _marker_line(lines, start, readme)
    end_index = _marker_line(lines, end, readme)
    if end_index < start_index:
        raise StudyError(f"{readme} has the marker '{end}' before '{start}'; put the end marker last.")
    if block and not block.endswith("\n"):
        block += "\n"
    return [*lines[: start_index + 1], *block.splitlines(keepends=True), *lines[end_index:]]


def _marker_line(lines: Sequence[str], marker: str, readme: Path) -> int:
    indices = [index for index, line in enumerate(lines) if line.strip() == marker]
    if len(indices) != 1:
        found = "lacks" if not indices else f"has {len(indices)} lines of"
        raise StudyError(f"{readme} {found} the marker '{marker}'; it needs exactly one such line.")
    return indices[0]


def results_block(datasets: Sequence[str], tables: Sequence[Path], plots: Sequence[Mapping[str, str]]) -> str:
    """The README's results: each dataset's accuracy table followed by links to its plots.

    ``plots`` holds, per dataset, its plots' paths relative to the README by plot name, in link order.
    """
    sections = []
    for dataset, table, paths in zip(datasets, tables, plots, strict=True):
        links = " · ".join(f"[{name.replace('_', ' ')}]({path})" for name, path in paths.items())
        title = DATASET_TITLES.get(dataset, dataset)
        sections.append(f"### {title}\n\n{Path(table).read_text().strip()}\n\nPlots: {links}\n")
    return "\n".join(sections)
