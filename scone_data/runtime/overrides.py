"""Settings as text, read one way by ``scone-data`` and ``scone-train``: YAML files, ``key=value``
overrides, and the typed check of each value against the annotation of the field it sets.

- YAML is read with :class:`StrictLoader`: ``safe_load``'s constructors (a tag such as
  ``!!python/object`` is refused, never run), a duplicate key in a mapping is an error instead of the
  last one silently winning, and numbers in exponent form without a dot (``1e-3``, ``1e3``) are
  floats (YAML 1.1 would keep them strings). A file that is not UTF-8 text is a one-line error.
- An override is ``dotted.key=value``, the value parsed as one YAML scalar or flow collection with the
  same loader (``""`` is null).
- :func:`check_value` checks a value against a type annotation: ``bool`` is not an ``int``; an
  integral float is an ``int`` (``1e3`` -> 1000); lists become tuples for tuple fields; the message
  names the expected type (``a list of 2 numbers``, ``one of ray, local``).

Every problem is a :class:`ConfigError` line; callers collect them and report all at once (exit 2).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


# -- YAML ------------------------------------------------------------------------------------------
class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate mapping keys and reads ``1e-3`` as a float."""


def _unique_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base`` then overriding a key is fine
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping says so below
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {first + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def load_yaml_text(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError([f"{where}: not valid YAML: {_one_line(e)}"]) from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file's value; :class:`ConfigError` (one line) when missing, not UTF-8 or not YAML."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot be read ({e.strerror or e})"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            [f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8"]
        ) from None
    return load_yaml_text(text, str(path))


# -- overrides -------------------------------------------------------------------------------------
def parse_override(item: str) -> tuple[str, Any]:
    """``"pairs.seed=3"`` -> ``("pairs.seed", 3)``."""
    if "=" not in item:
        raise ConfigError([f"override {item!r}: expected key=value"])
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError([f"override {item!r}: the key must be dotted names, e.g. pairs.seed=3"])
    return key, (None if raw == "" else load_yaml_text(raw, f"override {item!r}"))


def parse_overrides(items: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """Every override parsed, in order; one :class:`ConfigError` listing all that do not parse."""
    out, problems = [], []
    for item in items:
        try:
            out.append(parse_override(item))
        except ConfigError as e:
            problems += e.problems
    if problems:
        raise ConfigError(problems)
    return out


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    """``cfg[a][b][c] = value`` for ``a.b.c``, making mappings on the way; a non-mapping on the way
    is a :class:`ConfigError` (``data.shards.x=1`` where ``data.shards`` is a list)."""
    node = cfg
    parts = key.split(".")
    for i, p in enumerate(parts[:-1]):
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError([f"override {key}: {where} is {type(nxt).__name__}, not a mapping"])
        node = nxt
    node[parts[-1]] = value


def nest(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        set_dotted(out, k, v)
    return out


# -- typed check -----------------------------------------------------------------------------------
_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def describe(ann: Any, plural: bool = False) -> str:
    """``tuple[float, float]`` -> ``"a list of 2 numbers"``: the type as a user writes it in YAML."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if plural and ann in _PLURALS:
        return _PLURALS[ann]
    if ann in _NAMES:
        return _NAMES[ann]
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in ann)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return f"a list of {describe(args[0], True)}" if args else "a list"
    if origin is tuple:
        same = len(set(args)) == 1
        inner = describe(args[0], True) if same else ", ".join(describe(a) for a in args)
        return f"a list of {len(args)} {inner}" if same else f"a list of ({inner})"
    if origin is dict:
        return f"a mapping of {describe(args[0], True)} to {describe(args[1], True)}" if args else "a mapping"
    if ann is Path:
        return "a path"
    return getattr(ann, "__name__", str(ann))


class _Bad(Exception):
    pass


def _coerce(value: Any, ann: Any) -> Any:
    """``value`` as type ``ann`` (an int for an integral float, a tuple for a list) or :class:`_Bad`."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is Any or ann is object:
        return value
    if ann is type(None) or ann is None:
        if value is None:
            return None
        raise _Bad
    if ann is bool:
        if isinstance(value, bool):
            return value
        raise _Bad
    if ann is int:
        if isinstance(value, bool):
            raise _Bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)  # 1e3
        raise _Bad
    if ann is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Bad
        return value  # an int stays an int: the settings hash of ``2`` must not become ``2.0``
    if ann is str or ann is Path:
        if isinstance(value, str):
            return value
        raise _Bad
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        for m in ann:
            if value == m.value or value == m.name or value is m:
                return m
        raise _Bad
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Bad
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _coerce(value, a)
            except _Bad:
                continue
        raise _Bad
    if origin is list:
        if not isinstance(value, list | tuple):
            raise _Bad
        return [_coerce(v, args[0]) for v in value] if args else list(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _Bad
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if args and len(value) != len(args):
            raise _Bad
        return tuple(_coerce(v, a) for v, a in zip(value, args)) if args else tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise _Bad
        if not args:
            return dict(value)
        return {_coerce(k, args[0]): _coerce(v, args[1]) for k, v in value.items()}
    if origin is None and isinstance(ann, type):
        if isinstance(value, ann):
            return value
        raise _Bad
    return value  # an annotation this check does not know: the class's own validate() decides


def check_value(value: Any, ann: Any, where: str) -> tuple[Any, str | None]:
    """``(value as ann, None)``, or ``(value, "where: must be <type>, got <value>")``."""
    try:
        return _coerce(value, ann), None
    except _Bad:
        return value, f"{where}: must be {describe(ann)}, got {value!r}"


def check_fields(cls: type, settings: dict[str, Any], section: str) -> tuple[dict[str, Any], list[str]]:
    """Each known key of ``settings`` checked against the annotation of ``cls``'s field of that name.

    Returns the coerced settings (unknown keys left as they are, for the caller to name) and one
    problem per field of the wrong type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    out, problems = dict(settings), []
    for k, v in settings.items():
        if k in fields and k in hints:
            out[k], p = check_value(v, hints[k], f"{section}.{k}")
            if p:
                problems.append(p)
    return out, problems
