"""The generic typed config loader (ircr.config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from ircr.config import apply_overrides, from_dict, read_yaml
from ircr.errors import IrcrError


@dataclass
class Inner:
    lr: float = 1e-4
    steps: list[int] = field(default_factory=lambda: [100])


@dataclass
class Outer:
    name: Literal["a", "b"] = "a"
    inner: Inner = field(default_factory=Inner)
    path: str | None = None


def test_defaults_and_nested_values() -> None:
    cfg = from_dict(Outer, {"name": "b", "inner": {"lr": 2, "steps": [1, 2]}})
    assert cfg.name == "b" and cfg.inner.lr == 2.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.steps == [1, 2] and cfg.path is None


def test_yaml_exponent_without_dot_is_a_float(tmp_path) -> None:
    # PyYAML (YAML 1.1) reads 2e-3 as the string "2e-3"; the loader accepts it as a float.
    f = tmp_path / "c.yaml"
    f.write_text("inner:\n  lr: 2e-3\n")
    cfg = from_dict(Outer, read_yaml(f), where=str(f))
    assert cfg.inner.lr == pytest.approx(0.002)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"nmae": "a"}, "unknown config key 'nmae'"),
        ({"inner": {"lrr": 1}}, "unknown config key 'inner.lrr'"),
        ({"inner": {"lr": "fast"}}, "'inner.lr' must be float"),
        ({"inner": {"lr": "nan"}}, "'inner.lr' must be float"),
        ({"name": "c"}, "'name' must be 'a' | 'b'"),
        ({"inner": {"steps": [1, "x"]}}, "'inner.steps[1]' must be int"),
        ({"inner": 3}, "'inner' must be Inner"),
    ],
)
def test_bad_config_is_one_line_error_naming_file_and_key(data: dict, needle: str) -> None:
    with pytest.raises(IrcrError) as exc:
        from_dict(Outer, data, where="cfg.yaml")
    msg = str(exc.value)
    assert msg.startswith("cfg.yaml: ") and needle in msg and "\n" not in msg


@dataclass
class Switch:
    amp: Literal["auto", "bf16", "off"] = "auto"


def test_unquoted_yaml_off_means_the_word_off() -> None:
    data = apply_overrides({}, ["amp=off"])  # YAML 1.1: off -> False
    assert data["amp"] is False
    assert from_dict(Switch, data).amp == "off"
    with pytest.raises(IrcrError, match="'amp' must be"):
        from_dict(Switch, {"amp": True}, where="cfg.yaml")  # no "on" among the choices


def test_overrides_parse_yaml_values() -> None:
    data = apply_overrides({"inner": {"lr": 1.0}}, ["inner.lr=0.5", "inner.steps=[3, 4]", "name=b"])
    cfg = from_dict(Outer, data)
    assert cfg.inner.lr == 0.5 and cfg.inner.steps == [3, 4] and cfg.name == "b"
    with pytest.raises(IrcrError, match="key=value"):
        apply_overrides({}, ["inner.lr"])


def test_read_yaml_errors(tmp_path) -> None:
    with pytest.raises(IrcrError, match="config file not found"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(IrcrError, match="invalid YAML"):
        read_yaml(bad)
