"""Source registry: well-formed entries, real files where packages are installed, licences that match the packages.

Axis legend: none.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tessera.data.sources import (
    DEBIAN_PACKAGES,
    IMAGE_SOURCES,
    available_sources,
    locate_source,
    source_roots,
)


def test_registry_entries_are_unique_and_complete():
    ids = [s.id for s in IMAGE_SOURCES]
    assert len(ids) == len(set(ids))
    assert len({(s.package, s.path) for s in IMAGE_SOURCES}) == len(IMAGE_SOURCES)
    for s in IMAGE_SOURCES:
        assert s.licence and s.credit and s.licence_from and s.title, s.id
        assert s.split in ("train", "val") and s.kind in ("photo", "photo-gray", "artwork")
    # A pip-only install (scikit-image + matplotlib) must still have both splits.
    pip = [s for s in IMAGE_SOURCES if s.package not in DEBIAN_PACKAGES]
    assert {s.split for s in pip} == {"train", "val"}
    # The full set has the 12 mate nature photos and holds out a few whole images per package.
    assert sum(s.package == "mate-backgrounds" and s.path.startswith("nature/") for s in IMAGE_SOURCES) == 12
    for pkg in {s.package for s in IMAGE_SOURCES} - {"matplotlib"}:  # matplotlib ships a single photo
        assert any(s.split == "val" for s in IMAGE_SOURCES if s.package == pkg), pkg


def test_pip_package_sources_exist_in_the_installed_wheels():
    roots = source_roots(None)
    for s in IMAGE_SOURCES:
        if s.package in ("scikit-image", "matplotlib"):
            assert locate_source(s, roots) is not None, f"{s.id}: {s.path} not found in the installed {s.package}"


@pytest.mark.parametrize("package", DEBIAN_PACKAGES)
def test_debian_sources_exist_and_licences_match_the_copyright_file(package):
    copyright_file = Path("/usr/share/doc") / package / "copyright"
    if not copyright_file.is_file():
        pytest.skip(f"{package} is not installed (apt-get install {package})")
    text = copyright_file.read_text(errors="replace")
    roots = source_roots(None)
    for s in (s for s in IMAGE_SOURCES if s.package == package):
        assert locate_source(s, roots) is not None, f"{s.id}: {s.path} missing although {package} is installed"
        assert s.licence.split(" ")[0] in text  # e.g. "GPL-2+" is the licence Debian states
        if package == "mate-backgrounds":
            # The stanza listing this file names the credited author.
            stanza = next(block for block in text.split("\n\n") if s.path in block)
            first_author = re.split(r"[;,]", s.credit.split(", ", 1)[-1])[0].strip()
            assert first_author in stanza, (s.id, first_author)


def test_override_folders_replace_the_default_locations(tmp_path, monkeypatch):
    (tmp_path / "scikit-image").mkdir()
    (tmp_path / "scikit-image" / "astronaut.png").write_bytes(b"x")
    found, missing = available_sources([tmp_path])
    assert [s.id for s, _ in found] == ["skimage/astronaut"]
    assert len(missing) == len(IMAGE_SOURCES) - 1
    monkeypatch.setenv("TESSERA_DATA_SOURCES", str(tmp_path))
    assert [s.id for s, _ in available_sources()[0]] == ["skimage/astronaut"]
    with pytest.raises(ValueError, match="unknown image source"):
        available_sources([tmp_path], ids=["skimage/nope"])
