"""cifar-resnet release and hubconf.py: finished runs packed for torch.hub, downloaded and verified."""

import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from email.message import Message
from pathlib import Path

import pytest
import torch
from test_hub import finished_run  # noqa: F401 (a fixture)

import cifar_resnet
from cifar_resnet import cli
from cifar_resnet.datasets import load_prepared
from cifar_resnet.errors import StudyError
from cifar_resnet.release import CHECKSUMS, MANIFEST, release_runs

ROOT = Path(__file__).resolve().parents[1]
NAME = "demo-paper-resnet20-seed0"
REPOSITORY = "someone/cifar-resnet:v1"  # a GitHub repository as the model cards name it


@pytest.fixture
def released(finished_run, served, tmp_path, monkeypatch):  # noqa: F811
    """The finished run released into the served folder, its URL given; its manifest's URL."""
    folder, url = served
    manifest_url = f"{url}/v1/{MANIFEST}"
    release_runs([finished_run], folder / "v1", repository=REPOSITORY, url=manifest_url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty torch.hub cache
    return folder / "v1", manifest_url


def test_the_release_holds_each_file_with_its_sha256(released):
    folder, _ = released
    manifest = json.loads((folder / MANIFEST).read_text())
    entry = manifest["models"][NAME]
    weights = folder / entry["files"]["weights"]
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()

    assert weights.name == f"{NAME}-{digest[:12]}.pt" and entry["sha256"]["weights"] == digest
    sums = dict(line.split("  ")[::-1] for line in (folder / CHECKSUMS).read_text().splitlines())
    assert set(sums) == {path.name for path in folder.iterdir()} - {CHECKSUMS}
    assert all(hashlib.sha256((folder / name).read_bytes()).hexdigest() == sums[name] for name in sums)
    card = (folder / entry["files"]["card"]).read_text()
    assert f"| Test error | {entry['test_error']:.2f} % (this seed)" in card and '"resnet20"' in card


def test_torch_hub_loads_the_released_model_as_load_run_does(released, finished_run, prepared):  # noqa: F811
    _, manifest_url = released
    images = load_prepared(prepared, splits=("test",))["test_images"]

    model = torch.hub.load(str(ROOT), "resnet20", source="local", dataset="demo", release=manifest_url)

    with torch.no_grad():
        assert torch.equal(model(images), cifar_resnet.load_run(finished_run)(images))
    assert model.provenance == cifar_resnet.load_run(finished_run).provenance
    assert model.class_names == json.loads((finished_run / "train.json").read_text())["class_names"]


def test_a_tampered_weights_file_is_refused_in_one_sentence_and_not_cached(released, tmp_path):
    folder, manifest_url = released
    weights = next(folder.glob(f"{NAME}-*.pt"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(StudyError, match=f"{weights.name} .* does not match the sha256 its manifest records"):
        torch.hub.load(str(ROOT), "resnet20", source="local", dataset="demo", release=manifest_url)
    assert not list((tmp_path / "torch-home").rglob("*.pt"))


def load(manifest_url: str, seed: int = 0):
    return torch.hub.load(
        str(ROOT), "resnet20", source="local", dataset="demo", seed=seed, release=manifest_url
    )


def test_every_load_verifies_the_cached_weights_not_only_the_download(released, tmp_path):
    """A cached copy changed after its download (a flipped bit, another run's weights put in its place) is
    refused on the next load, and removed, instead of loading silently."""
    folder, manifest_url = released
    load(manifest_url)
    (cached,) = (tmp_path / "torch-home").rglob(f"{NAME}-*.pt")
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0x40
    cached.write_bytes(bytes(data))
    with pytest.raises(
        StudyError, match="does not match the sha256 its manifest records: the download or the"
    ):
        load(manifest_url)
    assert not cached.exists()
    assert load(manifest_url).provenance["seed"] == 0  # downloaded again, whole


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    (folder / MANIFEST).write_text(json.dumps(change(manifest)))


def test_weights_of_another_run_than_the_manifest_names_are_refused(released):
    folder, manifest_url = released
    edit_manifest(folder, lambda m: {"models": {NAME.replace("seed0", "seed1"): m["models"][NAME]}})
    with pytest.raises(
        StudyError, match=f"holds the model {NAME}, not demo-paper-resnet20-seed1 as its manifest"
    ):
        load(manifest_url, seed=1)


@pytest.mark.parametrize(
    ("change", "sentence"),
    [
        (lambda m: list(m["models"]), r"is not a release manifest: it has no mapping of models"),
        (lambda m: {"models": {NAME: {"name": NAME}}}, r"lacks its weights file or their full sha256"),
        (
            lambda m: {"models": {NAME: {**m["models"][NAME], "sha256": {}}}},
            r"lacks its weights file or their",
        ),
        (
            lambda m: {"models": {NAME: {**m["models"][NAME], "sha256": {"weights": "0" * 12}}}},
            r"lacks its weights file or their full sha256",
        ),
        (
            lambda m: {"models": {NAME: {**m["models"][NAME], "sha256": {"weights": "0" * 64}}}},
            r"does not match the sha256 its manifest records",
        ),
        (
            lambda m: {"models": {NAME: {**m["models"][NAME], "files": {"weights": "missing.pt"}}}},
            r"Cannot download http://127.0.0.1:\d+/v1/missing.pt \(HTTP Error 404",
        ),
    ],
)
def test_a_malformed_manifest_is_one_sentence_and_nothing_is_loaded(released, change, sentence):
    folder, manifest_url = released
    edit_manifest(folder, change)
    with pytest.raises(StudyError, match=sentence):
        load(manifest_url)


def test_a_model_the_release_lacks_is_named_with_what_it_has(released):
    _, manifest_url = released
    with pytest.raises(StudyError, match=f"no model demo-paper-resnet32-seed0; it has: {NAME}"):
        torch.hub.load(str(ROOT), "resnet32", source="local", dataset="demo", release=manifest_url)


def test_the_release_folder_must_be_new(finished_run, tmp_path):  # noqa: F811
    (tmp_path / "v1").mkdir()
    with pytest.raises(StudyError, match="v1 exists"):
        release_runs([finished_run], tmp_path / "v1", repository=REPOSITORY)


def test_the_same_runs_give_the_same_bytes(finished_run, tmp_path):  # noqa: F811
    """A release is reproducible: nothing in its files depends on when, where or under which temporary
    name it was built, so the same runs give the same sha256 values."""
    release_runs([finished_run], tmp_path / "a", repository=REPOSITORY)
    release_runs([finished_run], tmp_path / "b", repository=REPOSITORY)
    files = sorted(path.name for path in (tmp_path / "a").iterdir())
    assert files == sorted(path.name for path in (tmp_path / "b").iterdir())
    assert all((tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes() for name in files)


@pytest.mark.parametrize(
    ("damage", "sentence"),
    [
        ("model.pt", r"seed0 has no model.pt: name the folders of finished runs"),
        ("eval.json", r"seed0 has no eval.json: name the folders of finished runs"),
        ("folder", r"seed0 is not a folder: name the folders of finished runs"),
    ],
)
def test_a_folder_that_is_not_a_finished_run_is_named_and_nothing_is_left(
    finished_run,  # noqa: F811
    tmp_path,
    damage,
    sentence,
):
    import shutil

    run_dir = tmp_path / "runs" / "paper" / "resnet20" / "seed0"
    shutil.copytree(finished_run, run_dir)
    if damage == "folder":
        shutil.rmtree(run_dir)
    else:
        (run_dir / damage).unlink()
    with pytest.raises(StudyError, match=sentence):
        release_runs([finished_run, run_dir], tmp_path / "v1", repository=REPOSITORY)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["runs"]


def test_a_release_that_fails_while_building_leaves_nothing(finished_run, tmp_path, monkeypatch):  # noqa: F811
    from cifar_resnet import release

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(release, "write_json", full_disk)
    with pytest.raises(OSError):
        release_runs([finished_run], tmp_path / "v1", repository=REPOSITORY)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a Python process that imports torch
def test_the_command_releases_the_runs_named(finished_run, tmp_path):  # noqa: F811
    out = tmp_path / "release"
    command = [sys.executable, "-m", "cifar_resnet.cli", "release", str(out), str(finished_run)]
    command += ["--repository", REPOSITORY]
    printed = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert f"released 1 model(s) in {out}" in printed
    assert sorted(path.suffix for path in out.iterdir()) == ["", ".json", ".md", ".pt"]


def card_snippet(card: str) -> str:
    """The torch.hub snippet of a model card, loading from this clone instead of GitHub."""
    snippet = card.split("## How to load it", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert f'model = torch.hub.load(\n    "{REPOSITORY}",\n    "resnet20",\n' in snippet
    local = snippet.replace(f'"{REPOSITORY}",', f"{str(ROOT)!r},")
    return local.replace("\n)\n", '\n    source="local",\n)\n', 1)


def run_snippet(snippet: str, prepared: Path, **environment: str) -> str:
    """What the snippet prints, given the prepared test images as ``images``."""
    data = f"load_prepared({str(prepared)!r}, splits=('test',))"
    code = f"from cifar_resnet.datasets import load_prepared\nimages = {data}['test_images']\n{snippet}"
    environment = {**os.environ, **environment}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environment
    ).stdout.strip()


@pytest.mark.slow  # a Python process that imports torch
def test_the_model_card_loads_the_model_from_the_repository_and_url_given(released, finished_run, prepared):  # noqa: F811
    folder, manifest_url = released
    snippet = card_snippet((folder / f"{NAME}.md").read_text())
    assert f'    release="{manifest_url}",\n' in snippet and "pretrained" not in snippet
    class_names = json.loads((finished_run / "train.json").read_text())["class_names"]
    assert run_snippet(snippet, prepared, TORCH_HOME=os.environ["TORCH_HOME"]) in class_names


@pytest.mark.slow  # a Python process that imports torch
def test_without_a_url_the_model_card_asks_for_the_releases_url(finished_run, served, prepared, tmp_path):  # noqa: F811
    folder, url = served
    release_runs([finished_run], folder / "v1", repository=REPOSITORY)
    card = (folder / "v1" / f"{NAME}.md").read_text()
    assert (
        "Set the environment variable CIFAR_RESNET_RELEASE to the URL this folder's `manifest.json` has"
        in card
    )
    snippet = card_snippet(card)
    assert "    pretrained=True,\n" in snippet and "release=" not in snippet
    class_names = json.loads((finished_run / "train.json").read_text())["class_names"]
    printed = run_snippet(
        snippet,
        prepared,
        CIFAR_RESNET_RELEASE=f"{url}/v1/{MANIFEST}",
        TORCH_HOME=str(tmp_path / "torch-home"),
    )
    assert printed in class_names


def installed_with(monkeypatch, *urls: str) -> None:
    """The installed package's metadata, as read by the release, holds these Project-URL entries."""
    metadata = Message()
    for url in urls:
        metadata["Project-URL"] = url
    monkeypatch.setattr(importlib.metadata, "metadata", lambda name: metadata)


def card_of(folder: Path) -> str:
    return (folder / f"{NAME}.md").read_text()


def test_the_repository_defaults_to_the_packages_repository_url(finished_run, tmp_path, monkeypatch):  # noqa: F811
    installed_with(
        monkeypatch, "Paper, https://arxiv.org/abs/1512.03385", "Repository, https://github.com/me/cifar"
    )
    release_runs([finished_run], tmp_path / "a")
    assert 'torch.hub.load(\n    "me/cifar",\n' in card_of(tmp_path / "a")

    installed_with(monkeypatch, "repository, https://github.com/me/cifar-resnet.git/")
    cli.main(["release", str(tmp_path / "b"), str(finished_run)])
    assert 'torch.hub.load(\n    "me/cifar-resnet",\n' in card_of(tmp_path / "b")

    # the option comes before the package's URL
    cli.main(["release", str(tmp_path / "c"), str(finished_run), "--repository", REPOSITORY])
    assert f'torch.hub.load(\n    "{REPOSITORY}",\n' in card_of(tmp_path / "c")


def not_installed(name):
    raise importlib.metadata.PackageNotFoundError(name)


@pytest.mark.parametrize(
    ("installed", "options", "sentence"),
    [
        (
            ["Paper, https://arxiv.org/abs/1512.03385"],
            [],
            r"^error: The model cards name the GitHub repository torch.hub loads the models from: give its "
            r"owner/name with --repository, or add its URL as Repository under \[project.urls\] in "
            r"pyproject.toml and install the package again.$",
        ),
        (None, [], r"give its owner/name with --repository, or add its URL as Repository"),
        (["Repository, https://gitlab.com/me/cifar"], [], r"https://gitlab.com/me/cifar, is not a GitHub"),
        (
            [],
            ["--repository", "https://github.com/me/cifar"],
            r"is not a GitHub repository as torch.hub names",
        ),
        ([], ["--repository", "me"], r"'me' is not a GitHub repository as torch.hub names it"),
        (
            [],
            ["--repository", "me/cifar", "--url", "https://example.org/v1/"],
            r"is not the URL of a release's",
        ),
        ([], ["--repository", "me/cifar", "--url", "v1/manifest.json"], r"give --url the http\(s\) URL"),
    ],
)
def test_no_repository_or_a_bad_one_or_a_bad_url_is_one_sentence_and_nothing_is_written(
    finished_run,  # noqa: F811
    tmp_path,
    monkeypatch,
    installed,
    options,
    sentence,
):
    if installed is None:
        monkeypatch.setattr(importlib.metadata, "metadata", not_installed)
    else:
        installed_with(monkeypatch, *installed)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["release", "release", str(finished_run), *options])
    assert stopped.value.code and re.search(sentence, str(stopped.value.code))
    assert list(tmp_path.iterdir()) == []
