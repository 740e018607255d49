"""Shared fixtures: a tiny pip-only few-shot suite and its embeddings, built once per session in a temporary cache."""

from __future__ import annotations

import os
import warnings

import pytest

from tessera.icl.suite import SuiteConfig

TINY = SuiteConfig(
    system=False,
    glyph_max_per_script=8,
    glyph_instances=12,
    shape_classes=60,
    shape_instances=12,
    crop_instances=12,
)


@pytest.fixture(scope="session")
def icl_cache(tmp_path_factory):
    """A private TESSERA_CACHE for the icl tests (suite and embedding caches land there)."""
    root = tmp_path_factory.mktemp("tessera-cache")
    old = os.environ.get("TESSERA_CACHE")
    os.environ["TESSERA_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("TESSERA_CACHE", None)
    else:
        os.environ["TESSERA_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_suite(icl_cache):
    """The reduced suite (matplotlib/scikit-image sources only) at a small size; returns its config."""
    from tessera.icl.suite import build_suite

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the expected "REDUCED suite" warning is tested separately
        build_suite(TINY, ["glyphs", "shapes", "glyphs-eval"], progress=False)
    return TINY
