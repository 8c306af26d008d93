"""What several test modules share: the summary of one dataset's runs (the table and plot tests),
and a small prepared demo dataset with the demo study (the training and runtime tests)."""

import http.server
import logging
import threading
from functools import partial

import pandas as pd
import pytest
from test_config import demo_config
from test_summary import summary_row

from cifar_resnet import datasets, sources
from cifar_resnet.config import load_study
from cifar_resnet.demo import write_demo_archive

# (variant, depth, per-seed test errors %)
ERRORS = [
    ("paper", 20, [8.0, 8.2, 8.4]),  # mean 8.20, std sqrt((0.04 + 0 + 0.04) / 2) = 0.20
    ("better", 20, [6.0, 6.1, 6.2]),  # mean 6.10, std 0.10; Welch p ≈ 0.0006 vs paper
    ("noise", 20, [8.3, 8.5, 8.7]),  # mean 8.50, std 0.20; Welch p ≈ 0.14 vs paper
    ("single", 20, [7.5]),  # one seed: no std, cannot be tested
    ("paper", 32, [7.0, 7.4]),  # mean 7.20, std sqrt((0.04 + 0.04) / 1) = 0.2828
    ("paper", 8, [12.0, 12.5]),  # a depth the paper has no number for
]


@pytest.fixture(autouse=True)
def logging_restored():
    """A job (``run_job``) and the command line configure logging as their process's own; a test that calls
    them in this process leaves no handler, bound to its captured streams, and no level to the next test."""
    loggers = [logging.getLogger(name) for name in ("", "cifar_resnet", "cifar_resnet.runtime")]
    saved = [(logger.handlers[:], logger.level) for logger in loggers]
    yield
    for logger, (handlers, level) in zip(loggers, saved, strict=True):
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)


@pytest.fixture
def summary():
    rows = [
        summary_row(variant, depth, seed, error)
        for variant, depth, errors in ERRORS
        for seed, error in enumerate(errors)
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_demo_archive(folder / "demo.tar.gz", seed=0, train_size=400, test_size=100)
    datasets.prepare_dataset(
        folder / "demo.tar.gz", folder / "prepared.pt", sources.get_source("demo"), 0.2, 0
    )
    return folder / "prepared.pt"


@pytest.fixture(scope="module")
def study():
    return load_study(demo_config())


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1, and its base URL."""
    folder = tmp_path / "served"
    folder.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()
