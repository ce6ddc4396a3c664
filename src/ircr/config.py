"""Typed, validated configuration: dataclasses filled from YAML mappings.

Configuration is data. Each section of a config is a ``@dataclass`` with typed fields and
defaults; :func:`from_dict` builds it from a plain mapping and rejects unknown keys and
values of the wrong type with a one-line :class:`~ircr.errors.IrcrError` that names the
file and the dotted key. ``--set key=value`` overrides are applied with
:func:`apply_overrides` before validation.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Path``, ``Literal[...]``,
``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, nested dataclasses.

A section whose schema depends on its own content (the ``method`` section: its keys are the
chosen method's options) defines a classmethod ``parse_config(data, where, prefix)`` and a
method ``config_dict()``; :func:`from_dict` and :func:`to_dict` defer to them.

Numbers: every ``float`` must be finite (``.nan``/``.inf`` are errors), and a field declared
with :func:`bounded` (``field(metadata={"range": ...})``) must lie in its range (each item
for a list); :func:`check_ranges` applies the same rule to an instance built in code.

YAML: :func:`load_yaml_file` (every YAML file of the package) and :func:`parse_yaml_text`
(``--set`` values) refuse duplicate mapping keys and alias trees whose expansion adds more than
:data:`MAX_ALIAS_EXPANSION` values (a "billion laughs"); values in messages are cut to a
short repr (:func:`short_repr`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from ircr.errors import IrcrError

T = TypeVar("T")

#: values that aliases may add to a YAML document when expanded (beyond its own nodes)
MAX_ALIAS_EXPANSION = 10_000
MAX_YAML_DEPTH = 100  # nesting levels of a YAML document (configs use fewer than 10)
RANGE = "range"  # dataclass field metadata key: (low, high, low_open, high_open)

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxtuple = 2, 4, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 40, 40, 40


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters (bounded work on any value)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bounded(default: Any = dataclasses.MISSING, lo: float | None = None,
            hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
            factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose number (or each list item) must lie in [lo, hi].

    ``lo_open``/``hi_open`` exclude the bound; None leaves that side open. ``factory``
    gives a ``default_factory`` (lists). Checked by :func:`from_dict` / :func:`check_ranges`.
    """
    meta = {RANGE: (lo, hi, lo_open, hi_open)}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _range_text(rng: tuple[Any, Any, bool, bool], x: Any) -> str:
    """The violated side of the range (the whole range for a non-number)."""
    lo, hi, lo_open, hi_open = rng
    low = None if lo is None else f"{'>' if lo_open else '>='} {_num(lo)}"
    high = None if hi is None else f"{'<' if hi_open else '<='} {_num(hi)}"
    if isinstance(x, (int, float)) and x == x:
        return (low if lo is not None and x <= lo else high) or low or ""
    return " and ".join(t for t in (low, high) if t)


def _in_range(x: Any, rng: tuple[Any, Any, bool, bool]) -> bool:
    lo, hi, lo_open, hi_open = rng
    if isinstance(x, bool) or not isinstance(x, (int, float)) or x != x:
        return False
    if lo is not None and (x <= lo if lo_open else x < lo):
        return False
    return not (hi is not None and (x >= hi if hi_open else x > hi))


def check_ranges(obj: Any, where: str = "config", prefix: str = "") -> None:
    """Every :func:`bounded` field of dataclass ``obj`` in its range (None passes).

    Raises:
        IrcrError: ``<where>: config key '<prefix><name>' must be >= lo, got <value>`` (or
            ``<= hi``: the violated side).
    """
    for f in dataclasses.fields(obj):
        rng = f.metadata.get(RANGE)
        value = getattr(obj, f.name)
        if rng is None or value is None:
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for x in items:
            if not _in_range(x, rng):
                raise IrcrError(f"{where}: config key '{prefix}{f.name}' must be "
                                f"{_range_text(rng, x)}, got {short_repr(x)}")


class _NonFinite(IrcrError):
    """A float field given NaN or an infinity (kept through unions)."""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in get_args(tp))
        return f"{getattr(origin, '__name__', origin)}[{inner}]"
    return getattr(tp, "__name__", str(tp))


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string
        try:
            float(value)
        except ValueError:
            return False
        return math.isfinite(float(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) <= 2**1023  # float() of a larger int overflows
    return False


# Scalar types: (accept(value), convert(value)).
_SCALARS: dict[Any, tuple[Any, Any]] = {
    bool: (lambda v: isinstance(v, bool), lambda v: v),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), lambda v: v),
    float: (_is_number, float),
    str: (lambda v: isinstance(v, str), lambda v: v),
    Path: (lambda v: isinstance(v, (str, Path)), Path),
}


def _convert_literal(value: Any, choices: tuple[Any, ...], bad: IrcrError) -> Any:
    # YAML 1.1 reads unquoted on/off/yes/no as booleans: map them back to the word choices.
    if isinstance(value, bool):
        for word in (("on", "yes", "true") if value else ("off", "no", "false")):
            if word in choices:
                return word
    if value in choices and not (isinstance(value, bool) and True in choices):
        return value
    raise bad


def _convert_union(value: Any, tp: Any, key: str, where: str, bad: IrcrError) -> Any:
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg, key, where)
        except _NonFinite:
            raise
        except IrcrError:
            continue
    raise bad


def _convert_container(value: Any, tp: Any, key: str, where: str, bad: IrcrError) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        vtp = args[1] if args else Any
        return {str(k): _convert(v, vtp, f"{key}.{k}", where) for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        raise bad
    item_tp = args[0] if args else Any
    items = [_convert(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    return items if origin is list else tuple(items)


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check/convert one value against a type annotation."""
    bad = IrcrError(f"{where}: config key '{key}' must be {_type_name(tp)}, "
                    f"got {short_repr(value)}")
    origin = get_origin(tp)
    if tp is Any:
        return value
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise _NonFinite(f"{where}: config key '{key}' must be a finite number, "
                         f"got {short_repr(value)}")
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, key, where, bad)
    if origin is Literal:
        return _convert_literal(value, get_args(tp), bad)
    if origin in (list, tuple, dict):
        return _convert_container(value, tp, key, where, bad)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # type: ignore[arg-type]
            return value
        if not isinstance(value, dict):
            raise bad
        return from_dict(tp, value, where=where, prefix=f"{key}.")  # type: ignore[arg-type]
    if tp in _SCALARS:
        accept, conv = _SCALARS[tp]
        if accept(value):
            return conv(value)
        raise bad
    raise IrcrError(f"{where}: config key '{key}' has unsupported type {_type_name(tp)}")


def from_dict(
    cls: type[T], data: dict[str, Any] | None, where: str = "config", prefix: str = ""
) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise IrcrError.

    Args:
        cls: a dataclass type whose fields carry type annotations.
        data: mapping of field name to value (``None`` means all defaults).
        where: file name (or other origin) used in error messages.
        prefix: dotted key prefix for nested sections (used in error messages).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        section = prefix.rstrip(".") or "<root>"
        raise IrcrError(f"{where}: config section '{section}' must be a mapping")
    parse = getattr(cls, "parse_config", None)
    if callable(parse):  # a section that validates itself (see the module docstring)
        return parse(data, where, prefix)  # type: ignore[no-any-return]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys may be numbers too
    if unknown:
        valid = ", ".join(sorted(fields))
        key = str(unknown[0])
        key = key if len(key) <= 60 else key[:57] + "..."
        raise IrcrError(f"{where}: unknown config key '{prefix}{key}' (valid keys: {valid})")
    kwargs = {n: _convert(v, hints[n], prefix + n, where) for n, v in data.items()}
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise IrcrError(f"{where}: missing required config key '{prefix}{missing[0]}'")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):  # first: a section may name its keys itself (e.g. "model.")
        validate(where)
    check_ranges(obj, where, prefix)
    return obj


def to_dict(obj: Any) -> Any:
    """Convert a (nested) dataclass to plain YAML-serialisable Python objects."""
    dump = getattr(obj, "config_dict", None)
    if callable(dump) and not isinstance(obj, type):
        return dump()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """Read a YAML mapping from ``path`` with one-line errors for missing/invalid files.

    ``what`` names the kind of file in the messages ("config", "split", ...).
    """
    data = load_yaml_file(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise IrcrError(f"{path}: top level of a {what} must be a mapping")
    return data


def load_yaml_file(path: str | Path, what: str = "config") -> Any:
    """The one YAML file reader of the package: any YAML document, one-line errors.

    Missing file, unreadable file, non-UTF-8 bytes and invalid YAML are
    :class:`~ircr.errors.IrcrError` s naming the file (``what`` names its kind).
    """
    p = Path(path)
    if not p.is_file():
        raise IrcrError(f"{p}: {what} file not found")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise IrcrError(f"{p}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IrcrError(f"{p}: not a UTF-8 text file (byte 0x{raw[exc.start]:02x} at offset "
                        f"{exc.start}); save the {what} as UTF-8") from None
    return parse_yaml_text(text, str(p))


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (C parser when built) refusing duplicate keys in a mapping."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # "<<: *base" merges; the mapping's own keys override it
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if dup:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {short_repr(key)}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _alias_excess(data: Any) -> int:
    """Values that shared (aliased) containers add when expanded; -1 for a recursive alias.

    Iterative (no recursion limit) and linear in the distinct containers.
    """
    size: dict[int, int] = {}  # id -> expanded size of a finished container
    distinct = 1
    stack: list[tuple[Any, bool]] = [(data, False)]
    active: set[int] = set()
    while stack:
        node, done = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        kids = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        if done:
            active.discard(id(node))
            size[id(node)] = 1 + sum(size.get(id(k), 1) for k in kids)
            continue
        if id(node) in active:
            return -1
        if id(node) in size:
            continue
        active.add(id(node))
        distinct += len(kids)
        stack.append((node, True))
        stack.extend((k, False) for k in kids if isinstance(k, (dict, list)))
    return size.get(id(data), 1) - distinct


def _check_depth(text: str, where: str) -> None:
    """Refuse nesting deeper than :data:`MAX_YAML_DEPTH` before the C parser sees it (it
    recurses per level and crashes the process, no exception, some 10^4 levels deep).

    Each level needs one of ``[{-?:`` or a new line, so a text with fewer of them is safe
    unscanned; others are scanned (a flat token stream, no recursion).
    """
    bound = sum(text.count(c) for c in "[{-?:\n")
    if bound <= MAX_YAML_DEPTH:
        return
    depth = 0
    try:
        for tok in yaml.scan(text, Loader=_StrictLoader):
            if isinstance(tok, _OPEN):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise IrcrError(f"{where}: refused: YAML nested more than "
                                    f"{MAX_YAML_DEPTH} levels deep")
            elif isinstance(tok, _CLOSE):
                depth -= 1
    except yaml.YAMLError as exc:
        if "nesting depth" in str(exc):  # libyaml >= 0.2.6 refuses 1000+ levels itself
            raise IrcrError(f"{where}: refused: YAML nested more than {MAX_YAML_DEPTH} "
                            "levels deep") from None
        return  # invalid YAML: the loader reports it with its line


_OPEN = (yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken,
         yaml.BlockSequenceStartToken, yaml.BlockMappingStartToken)
_CLOSE = (yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken, yaml.BlockEndToken)


def parse_yaml_text(text: str, where: str = "--set") -> Any:
    """Parse YAML ``text`` (safe loader) with one-line errors naming ``where``.

    Duplicate mapping keys, recursive aliases, aliases expanding to more than
    :data:`MAX_ALIAS_EXPANSION` extra values and nesting deeper than :data:`MAX_YAML_DEPTH`
    levels are errors (as invalid YAML is).
    """
    _check_depth(text, where)
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = str(getattr(exc, "problem", ""))
        if problem.startswith("duplicate key"):
            raise IrcrError(f"{where}: {problem}{line}; each key may appear once") from None
        raise IrcrError(f"{where}: invalid YAML{line}") from exc
    except RecursionError:
        raise IrcrError(f"{where}: YAML nested too deeply") from None
    excess = _alias_excess(data)
    if excess < 0:
        raise IrcrError(f"{where}: refused: a recursive YAML alias (an anchor used inside "
                        "itself)")
    if excess > MAX_ALIAS_EXPANSION:
        raise IrcrError(f"{where}: refused: YAML aliases expand to {excess} more values (at "
                        f"most {MAX_ALIAS_EXPANSION}; a 'billion laughs' document?)")
    return data


def write_yaml(path: str | Path, data: Any) -> None:
    """Write ``data`` (dataclass or plain objects) to ``path`` as YAML (atomically)."""
    from ircr.io.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(data), sort_keys=False))


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str = "config") -> None:
    """``data["a"]["b"] = value`` for ``key = "a.b"`` (intermediate mappings created).

    The one dotted-key setter of the package (``--set``, protocol overrides, sub-trainings);
    ``value`` is deep-copied so the mapping never shares mutable values with the caller.
    """
    node = data
    *parents, leaf = key.strip().split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise IrcrError(f"{where}: override '{key}' goes through a non-mapping key '{part}'")
        node = child
    node[leaf] = copy.deepcopy(value)


def apply_overrides(
    data: dict[str, Any], overrides: list[str], where: str = "--set"
) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested mapping in place."""
    for item in overrides:
        if "=" not in item:
            raise IrcrError(f"{where}: override '{item}' must look like key=value")
        key, raw = item.split("=", 1)
        value = parse_yaml_text(raw, f"{where}: value of '{key}'")
        set_dotted(data, key, value, where)
    return data
