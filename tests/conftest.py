"""The summary of one dataset's runs that the table and plot tests share."""

import pandas as pd
import pytest
from test_summary import summary_row

# (variant, depth, per-seed test errors %)
ERRORS = [
    ("paper", 20, [8.0, 8.2, 8.4]),  # mean 8.20, std sqrt((0.04 + 0 + 0.04) / 2) = 0.20
    ("better", 20, [6.0, 6.1, 6.2]),  # mean 6.10, std 0.10; Welch p ≈ 0.0006 vs paper
    ("noise", 20, [8.3, 8.5, 8.7]),  # mean 8.50, std 0.20; Welch p ≈ 0.14 vs paper
    ("single", 20, [7.5]),  # one seed: no std, cannot be tested
    ("paper", 32, [7.0, 7.4]),  # mean 7.20, std sqrt((0.04 + 0.04) / 1) = 0.2828
    ("paper", 8, [12.0, 12.5]),  # a depth the paper has no number for
]


@pytest.fixture
def summary():
    rows = [
        summary_row(variant, depth, seed, error)
        for variant, depth, errors in ERRORS
        for seed, error in enumerate(errors)
    ]
    return pd.DataFrame(rows)
