"""Every bad input in the catalogue (tests/reliability_cases.py) gets a clear error that names the problem."""

from __future__ import annotations

import warnings

import pytest

from tests.reliability_cases import all_cases, run_case

CASES = all_cases()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.entry}:{c.name}" for c in CASES])
def test_bad_input_gets_a_clear_error(case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = run_case(case)
    assert outcome.ok, f"{case.entry} ({case.problem}: {case.name}): {outcome.detail}"


def test_catalogue_covers_every_entry_point_and_problem():
    entries = {c.entry.split(".")[0] for c in CASES}
    assert {"quantize", "tokenizer", "icl", "lm", "data", "config", "train", "cli tokenizer encode", "cli lm generate",
            "cli icl predict"} <= entries | {c.entry for c in CASES}
    assert {"nan_inf", "rank", "dtype", "empty", "range", "memory", "image", "config", "checkpoint"} <= {c.problem for c in CASES}
