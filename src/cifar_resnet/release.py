"""A release of chosen runs: a self-describing folder to attach to a GitHub release and load with
``torch.hub`` (``hubconf.py``). Per run it holds the weights with everything needed to use them (the
architecture, the input's normalisation, the class names, the provenance) in one file whose name carries
the start of its sha256 (the manifest records all of it, and every load checks it); the ONNX
and INT8 models where the run was deployed; a model card; and for the folder a manifest (``manifest.json``)
and ``SHA256SUMS``, which ``sha256sum -c`` checks.

The model cards load the model through torch.hub from the GitHub repository that holds
``hubconf.py``: ``repository`` (``--repository``), by default the ``Repository`` URL of the installed
package's ``[project.urls]``; and from the release's URL where it is given (``url``, ``--url``)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import statistics
from pathlib import Path
from urllib.parse import urlsplit

from cifar_resnet.errors import StudyError
from cifar_resnet.files import sha256, write_json, write_text
from cifar_resnet.hub import RELEASE_VARIABLE, model_name
from cifar_resnet.layout import DEPLOY_RECORD, DEPLOYED_MODELS, EVAL_RECORD, MODEL, TRAIN_RECORD, seed_dirs
from cifar_resnet.records import read_deploy_record, read_eval_record, read_train_record
from cifar_resnet.tensors import load_checkpoint, save_tensors
from cifar_resnet.trained import check_finished, checkpoint_of

MANIFEST = "manifest.json"
CHECKSUMS = "SHA256SUMS"
# The package's distribution, and the label of its repository's URL under [project.urls] in pyproject.toml.
DISTRIBUTION = "cifar-resnet"
REPOSITORY_LABEL = "Repository"
# torch.hub's GitHub repository: owner/name, optionally :ref (a tag or branch).
HUB_REPOSITORY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?/[A-Za-z0-9._-]+(?::[A-Za-z0-9._/-]+)?")
GITHUB_URL = re.compile(r"https?://(?:www\.)?github\.com/([^/]+/[^/]+?)(?:\.git)?/?")


def release_runs(
    run_dirs: list[Path], out: Path, repository: str | None = None, url: str | None = None
) -> dict:
    """Pack the finished runs in ``run_dirs`` into the new folder ``out``; returns the manifest. The folder
    is built beside ``out`` and renamed into place when complete. The model cards load the models from
    the GitHub repository ``repository`` (``owner/name``, optionally ``:tag``; by default the installed
    package's ``Repository`` URL) and, where ``url`` is given, from the release at that URL (its
    ``manifest.json``'s once published)."""
    out = Path(out)
    repository = hub_repository(repository)
    check_url(url)
    if out.exists():
        raise StudyError(f"{out} exists; name a new folder for the release, or delete that one.")
    if not run_dirs:
        raise StudyError(
            "No runs to release: name their folders, e.g. results/cifar10/runs/paper/resnet20/seed0."
        )
    for run_dir in map(Path, run_dirs):
        check_finished(run_dir)
    building = out.with_name(f".{out.name}.building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        manifest = build_release(run_dirs, building, {"repository": repository, "url": url})
        building.rename(out)
    finally:  # a failed release leaves nothing behind
        shutil.rmtree(building, ignore_errors=True)
    return manifest


def hub_repository(repository: str | None) -> str:
    """The GitHub repository the model cards load from: ``repository``, or the installed package's
    ``Repository`` URL; neither, or one torch.hub cannot load from, is one sentence."""
    if repository is None:
        repository = installed_repository()
    if repository is None:
        raise StudyError(
            "The model cards name the GitHub repository torch.hub loads the models from: give its owner/name "
            f"with --repository, or add its URL as {REPOSITORY_LABEL} under [project.urls] in pyproject.toml"
            " and install the package again."
        )
    if not HUB_REPOSITORY.fullmatch(repository):
        raise StudyError(
            f"{repository!r} is not a GitHub repository as torch.hub names it: give --repository its "
            "owner/name, optionally with :tag (the release's tag)."
        )
    return repository


def installed_repository() -> str | None:
    """``owner/name`` of the installed package's ``Repository`` URL (``[project.urls]``), where there is
    one; a URL that is not a GitHub repository is one sentence."""
    try:
        urls = importlib.metadata.metadata(DISTRIBUTION).get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for label, _, address in (entry.partition(",") for entry in urls):
        if label.strip().lower() == REPOSITORY_LABEL.lower():
            match = GITHUB_URL.fullmatch(address.strip())
            if not match:
                raise StudyError(
                    f"The package's {REPOSITORY_LABEL} URL, {address.strip()}, is not a GitHub repository, "
                    "which torch.hub loads from: give the repository's owner/name with --repository."
                )
            return match[1]
    return None


def check_url(url: str | None) -> None:
    """``url``, where given, must be the http(s) URL of a ``manifest.json``, as torch.hub's release takes."""
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or not parts.path.endswith(f"/{MANIFEST}"):
        raise StudyError(
            f"{url!r} is not the URL of a release's {MANIFEST}: give --url the http(s) URL its {MANIFEST}"
            f" will have once published (on a GitHub release, the download URL of its {MANIFEST} asset)."
        )


def build_release(run_dirs: list[Path], folder: Path, source: dict) -> dict:
    """Each run's files, the manifest and the checksums in ``folder``; returns the manifest. ``source``:
    where the model cards load the models from (``repository``, ``url``)."""
    models = {}
    for run_dir in map(Path, run_dirs):
        entry = release_run(run_dir, folder, source)
        if entry["name"] in models:
            raise StudyError(f"{run_dir} is the same run as another one named; release each run once.")
        models[entry["name"]] = entry
    manifest = {"models": models}
    write_json(folder / MANIFEST, manifest)
    files = sorted(path for path in folder.iterdir() if path.name != CHECKSUMS)
    write_text(folder / CHECKSUMS, "".join(f"{sha256(path)}  {path.name}\n" for path in files))
    return manifest


def release_run(run_dir: Path, folder: Path, source: dict) -> dict:
    """One run's files in ``folder``; returns its manifest entry."""
    summary, evaluation = read_train_record(run_dir / TRAIN_RECORD), read_eval_record(run_dir / EVAL_RECORD)
    checkpoint = checkpoint_of(summary, load_checkpoint(run_dir / MODEL), evaluation)
    name = model_name(summary["dataset"], summary["variant"], summary["depth"], summary["seed"])
    unnamed = folder / f"{name}.pt"
    save_tensors(unnamed, checkpoint)
    digest = sha256(unnamed)
    weights = unnamed.rename(folder / f"{name}-{digest[:12]}.pt").name
    files = {"weights": weights}
    deployment = run_dir / DEPLOY_RECORD
    for kind, file in DEPLOYED_MODELS.items():
        if (run_dir / file).exists():
            files[kind] = f"{name}.{file.removeprefix('model.')}"
            shutil.copyfile(run_dir / file, folder / files[kind])
    files["card"] = f"{name}.md"
    entry = {
        "name": name,
        **{field: summary[field] for field in ("dataset", "variant", "depth", "seed")},
        "files": files,
        "sha256": {"weights": digest},
        "test_error": evaluation["test_error"],
    }
    deployed = read_deploy_record(deployment) if deployment.exists() else None
    card = model_card(entry, summary, evaluation, deployed, seed_errors(run_dir), source)
    write_text(folder / files["card"], card)
    return entry


def seed_errors(run_dir: Path) -> list[float]:
    """The test errors of the run and of the other finished seeds of its dataset, variant and depth."""
    finished = {path.resolve() for path in seed_dirs(run_dir) if (path / EVAL_RECORD).exists()}
    return [
        read_eval_record(path / EVAL_RECORD)["test_error"] for path in sorted(finished | {run_dir.resolve()})
    ]


def model_card(
    entry: dict, summary: dict, evaluation: dict, deployment: dict | None, errors: list[float], source: dict
) -> str:
    """The model card: what the model is, how well it does (this seed's test error and all seeds'
    ``errors``), how fast, where it comes from, how to load it (from ``source``)."""
    run = f"{entry['dataset']} ResNet-{entry['depth']}, variant `{entry['variant']}`, seed {entry['seed']}"
    return "\n".join(
        [
            f"# {run}",
            "",
            *card_table(entry, summary, evaluation, deployment, errors),
            "",
            *card_provenance(summary),
            "",
            "## Files",
            "",
            *[f"- `{file}`" for file in entry["files"].values()],
            "",
            "`SHA256SUMS` lists every file's sha256 (`sha256sum -c SHA256SUMS`).",
            "",
            *card_loading(entry, **source),
        ]
    )


def card_table(entry: dict, summary: dict, evaluation: dict, deployment: dict | None, errors: list[float]):
    """The card's table: test error, size, training and, for a deployed run, CPU latency."""
    spread = f" ± {statistics.stdev(errors):.2f}" if len(errors) > 1 else ""
    lines = [
        "| | |",
        "|---|---|",
        f"| Test error | {evaluation['test_error']:.2f} % (this seed); "
        f"{statistics.mean(errors):.2f}{spread} % over {len(errors)} seed(s), mean ± std |",
        f"| Parameters, MACs per image | {evaluation['params']:,}, {evaluation['macs']:,} |",
        f"| Training | {summary['epochs']} epochs ({summary['iterations']} iterations), selected epoch "
        f"{summary['selected_epoch']}, {summary['train_seconds']:.0f} s on {summary['device']} |",
    ]
    if deployment:
        int8 = "int8" in entry["files"]
        lines.append(
            f"| CPU latency, batch 1, 1 thread (median) | onnxruntime float {deployment['onnx_b1_ms']:.2f} ms"
            + (f", INT8 {deployment['int8_b1_ms']:.2f} ms" if int8 else "")
            + f", PyTorch eager {deployment['eager_b1_ms']:.2f} ms, on {deployment['cpu']} |"
        )
        if int8:
            lines.append(f"| INT8 test error | {deployment['int8_test_error']:.2f} % |")
    return lines


def card_provenance(summary: dict) -> list[str]:
    """The card's sections on the data the model saw, its recipe and where it comes from."""
    config, normalization = summary["config"], summary["normalization"]
    return [
        "## Data",
        "",
        f"{summary['dataset']}: trained on the training split "
        f"({1 - config['data']['validation_fraction']:.0%} of the training set,"
        f" split seed {config['data']['split_seed']}), selected on the validation split,"
        " tested once on the test set. Input: uint8 RGB images `[batch, 3, 32, 32]`, values 0 to 255; the"
        f" model normalises them itself with the training split's mean {fmt(normalization['mean'])} and std"
        f" {fmt(normalization['std'])} (on the 0 to 1 scale). Classes: {', '.join(summary['class_names'])}.",
        "",
        "## Recipe",
        "",
        "```json",
        json.dumps(config["recipe"], indent=2, sort_keys=True),
        "```",
        "",
        "## Provenance",
        "",
        f"Configuration hash {summary['config_hash']}, git commit {summary['git_commit']}, versions "
        + ", ".join(f"{package} {version}" for package, version in sorted(summary["versions"].items()))
        + ".",
    ]


def card_loading(entry: dict, repository: str, url: str | None) -> list[str]:
    """How to load the model: torch.hub from ``repository`` and the release at ``url`` (where it is not
    given, the reader names it), and onnxruntime where the run was deployed."""
    arguments = [
        f'"{repository}"',
        f'"resnet{entry["depth"]}"',
        f'variant="{entry["variant"]}"',
        f"seed={entry['seed']}",
        f'dataset="{entry["dataset"]}"',
        f"release={json.dumps(url)}" if url else "pretrained=True",
    ]
    where = (
        []
        if url
        else [
            f"Set the environment variable {RELEASE_VARIABLE} to the URL this folder's `{MANIFEST}` has"
            " where it is published (or pass that URL as `release=`), then:",
            "",
        ]
    )
    lines = [
        "## How to load it",
        "",
        *where,
        "```python",
        "import torch",
        "",
        "model = torch.hub.load(",
        *[f"    {argument}," for argument in arguments],
        ")",
        "logits = model(images)  # uint8 [batch, 3, 32, 32]",
        "print(model.class_names[logits.argmax(1)[0]])",
        "```",
        "",
    ]
    if "onnx" in entry["files"]:
        lines += [
            f'Without PyTorch: `onnxruntime.InferenceSession("{entry["files"]["onnx"]}")`, input `images`'
            " (uint8, as above), output the logits.",
            "",
        ]
    return lines


def fmt(values: list[float]) -> str:
    return "(" + ", ".join(f"{value:.4f}" for value in values) + ")"
