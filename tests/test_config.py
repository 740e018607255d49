"""Strict dataclass configs: YAML + dotted overrides, unknown keys and wrong types rejected with the key named."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from tessera.config import ConfigError, dump_config, from_dict, load_config, to_dict


@dataclass
class Model:
    embed_dim: int = 32
    dropout: float = 0.0
    distance: Literal["euclidean", "cosine"] = "euclidean"
    ch_mult: tuple[int, ...] = (1, 2)


@dataclass
class Run:
    name: str = "x"
    model: Model = field(default_factory=Model)
    lr: float = 1e-3
    tags: list[str] = field(default_factory=list)
    note: str | None = None
    debug: bool = False


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: base\nmodel:\n  embed_dim: 64\n  ch_mult: [1, 2, 4]\nlr: 1e-4\n")
    cfg = load_config(Run, path, ["model.dropout=0.1", "tags=[a, b]", "note=hello", "debug=true", "lr=3e-4"])
    assert cfg.name == "base" and cfg.model.embed_dim == 64 and cfg.model.ch_mult == (1, 2, 4)
    assert cfg.model.dropout == 0.1 and cfg.tags == ["a", "b"] and cfg.note == "hello" and cfg.debug is True
    assert cfg.lr == pytest.approx(3e-4)


def test_int_accepted_for_float_but_not_the_reverse():
    assert load_config(Run, None, ["lr=1"]).lr == 1.0
    with pytest.raises(ConfigError, match="model.embed_dim: expected int"):
        load_config(Run, None, ["model.embed_dim=1.5"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.embed_dimm=3", "unknown config key.*model.embed_dimm"),
        ("foo=1", "unknown config key.*foo"),
        ("model.distance=manhattan", "model.distance: expected one of"),
        ("debug=yes please", "debug: expected bool"),
        ("lr=fast", "lr: expected float"),
        ("model=3", "model: expected a mapping"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Run, None, [override])


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  embed_dim: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Run, path)
    path.write_text("model:\n  depth: 3\n")
    with pytest.raises(ConfigError, match="model.depth"):
        load_config(Run, path)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(Run, tmp_path / "missing.yaml")


def test_dump_round_trip(tmp_path):
    cfg = load_config(Run, None, ["model.ch_mult=[1,1,2]", "note=n"])
    dump_config(cfg, tmp_path / "c.yaml")
    again = load_config(Run, tmp_path / "c.yaml")
    assert again == cfg
    assert to_dict(again)["model"]["ch_mult"] == [1, 1, 2]
    assert from_dict(Run, to_dict(cfg)) == cfg
