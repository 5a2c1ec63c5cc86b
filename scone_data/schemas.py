"""Versioned record schemas: the JSON Schema files in ``schemas/`` and the pyarrow schemas built from them.

The JSON files are the single source of truth. :func:`arrow_schema` derives a table schema from a
file (objects become structs, arrays lists, optional fields nullable), so the two cannot drift.

Each record kind has its own version (:data:`VERSIONS`; ``SCHEMA_VERSION`` for the kinds never
bumped). A record is checked against the file of its own ``schema_version`` when that version is
still readable (:data:`READABLE`), so outputs written before a bump validate and read as they are;
:func:`upgrade` turns an old record into the current version for readers that want one shape.
Sample v2 dropped the references' ``subject_list``/``subject_label`` (label lists under SconeEval's
names, which SconeEval uses for descriptions and 0/1 flags); the candidates hold the same facts.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import pyarrow as pa

from scone_data import SCHEMA_VERSION

RECORDS = ("source_image", "subject", "sample", "index_row", "reject", "manifest")
VERSIONS = {"sample": 2}  # what is written now; kinds not listed are at SCHEMA_VERSION
READABLE = {"sample": (1, 2)}  # what validates and reads
SAMPLE_VERSION = VERSIONS["sample"]


class SchemaError(ValueError):
    """A record does not match its schema; the message names the field (``references[0].member``)."""


def version(name: str) -> int:
    """The version of record ``name`` written now."""
    return VERSIONS.get(name, SCHEMA_VERSION)


@cache
def json_schema(name: str, version: int | None = None) -> dict[str, Any]:
    """The JSON Schema of record ``name`` at ``version`` (default: the current one)."""
    if name not in RECORDS:
        raise KeyError(f"unknown record {name!r}; known: {', '.join(RECORDS)}")
    v = version or VERSIONS.get(name, SCHEMA_VERSION)
    text = resources.files("scone_data._schemas").joinpath(f"{name}.v{v}.json").read_text()
    return json.loads(text)


def _version_of(name: str, record: Any) -> int:
    """``record``'s own schema_version when readable, else the current one (whose check then says
    which version is expected)."""
    v = record.get("schema_version") if isinstance(record, dict) else None
    return v if v in READABLE.get(name, ()) else version(name)


def upgrade(name: str, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` in the current version of ``name``: an older sample as a new dict, a current one as
    it is."""
    if name != "sample" or record.get("schema_version") != 1:
        return record
    refs = [
        {k: v for k, v in r.items() if k not in ("subject_list", "subject_label")}
        for r in record["references"]
    ]
    return {**record, "schema_version": 2, "references": refs}


@cache
def _validator(name: str, version: int | None = None):
    import jsonschema

    schema = json_schema(name, version)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def tasks() -> tuple[str, ...]:
    """The six SconeEval task types, in the order the Sample schema lists them."""
    return tuple(json_schema("sample")["properties"]["task"]["enum"])


def _path(err) -> str:
    out = ""
    for p in err.absolute_path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<record>"


# Keywords that draft-07 (what fastjsonschema implements) and 2020-12 (our files) read alike. A schema
# with any other keyword gets no fast path: fastjsonschema would ignore or misread a 2020-12 keyword
# (prefixItems, unevaluatedProperties, dependentRequired ...) and accept what jsonschema rejects.
_FAST_KEYWORDS = frozenset(
    "type properties required additionalProperties items minimum maximum minItems maxItems minLength "
    "maxLength enum const pattern title description".split()
)


def _same_in_draft07(node: Any) -> bool:
    """Whether schema ``node`` uses only :data:`_FAST_KEYWORDS`, at every depth."""
    if not isinstance(node, dict):
        return isinstance(node, bool)  # additionalProperties: false
    for k, v in node.items():
        if k not in _FAST_KEYWORDS:
            return False
        if k == "properties" and not all(_same_in_draft07(c) for c in v.values()):
            return False
        if k in ("items", "additionalProperties") and not _same_in_draft07(v):
            return False
    return True


@cache
def _fast(name: str, version: int | None = None):
    """A compiled check of schema ``name`` (fastjsonschema), or None when fastjsonschema is missing or
    the schema uses a keyword outside :data:`_FAST_KEYWORDS`; tests check both validators agree."""
    try:
        import fastjsonschema
    except ImportError:
        return None
    schema = {k: v for k, v in json_schema(name, version).items() if k not in ("$schema", "$id")}
    if not _same_in_draft07(schema):
        return None
    return fastjsonschema.compile(schema, use_default=False)  # a check never writes defaults into the record


def validate(name: str, record: dict[str, Any]) -> None:
    """Raise :class:`SchemaError` listing every violation of ``record`` against schema ``name`` (at
    the record's own version when readable, see :data:`READABLE`)."""
    # Every shard write validates its record: the compiled check costs ~0.1 ms where jsonschema costs
    # ~3-4 ms on a rendered sample (most of our overhead over a plain webdataset loop). jsonschema stays
    # the authority: it decides, and words the errors, whenever the fast check objects.
    v = _version_of(name, record)
    fast = _fast(name, v)
    if fast is not None:
        try:
            fast(record)
            return
        except Exception:  # noqa: BLE001 - any objection goes to jsonschema
            pass
    errors = sorted(_validator(name, v).iter_errors(record), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{_path(e)}: {e.message}" for e in errors[:20]]
        raise SchemaError(f"invalid {name} record: " + "; ".join(lines))


def _arrow_type(node: dict[str, Any]) -> pa.DataType:
    t = node.get("type")
    if isinstance(t, list):
        t = next(x for x in t if x != "null")
    if t == "object":
        props = node.get("properties")
        if not props:  # free-form object (config, augment): stored as a JSON string
            return pa.string()
        req = set(node.get("required", []))
        return pa.struct([_field(k, v, k in req) for k, v in props.items()])
    if t == "array":
        return pa.list_(_arrow_type(node["items"]))
    return {"string": pa.string(), "number": pa.float64(), "integer": pa.int64(), "boolean": pa.bool_()}[t]


def _field(name: str, node: dict[str, Any], required: bool) -> pa.Field:
    nullable = not required or (isinstance(node.get("type"), list) and "null" in node["type"])
    return pa.field(name, _arrow_type(node), nullable=nullable)


@cache
def arrow_schema(name: str) -> pa.Schema:
    """The pyarrow schema of a table whose rows are records ``name`` (field order as in the file)."""
    s = json_schema(name)
    req = set(s.get("required", []))
    return pa.schema([_field(k, v, k in req) for k, v in s["properties"].items()])


def _is_free(node: dict[str, Any]) -> bool:
    t = node.get("type")
    return (t == "object" or (isinstance(t, list) and "object" in t)) and not node.get("properties")


def _nullable(node: dict[str, Any]) -> bool:
    t = node.get("type")
    return t == "null" or (isinstance(t, list) and "null" in t) or not t


def _convert(node: dict[str, Any], value: Any, fn) -> Any:
    """Apply ``fn`` to every value that sits at a free-form object in the schema (at any depth)."""
    if value is None:
        return None
    if _is_free(node):
        return fn(value)
    if node.get("properties") and isinstance(value, dict):
        props, required = node["properties"], set(node.get("required", ()))
        return {
            k: (_convert(props[k], v, fn) if k in props else v)
            for k, v in value.items()
            # an optional property that cannot be null was absent: arrow filled the column with null
            if not (v is None and k in props and k not in required and not _nullable(props[k]))
        }
    if "items" in node and isinstance(value, list):
        return [_convert(node["items"], v, fn) for v in value]
    return value


def reject_record(
    stage: str, uri: str, image_id: str | None, reason: str, detail: str = ""
) -> dict[str, Any]:
    """One reject record (``reject.v1.json``): which stage refused which input, and why."""
    return {"schema_version": SCHEMA_VERSION, "stage": stage, "uri": uri, "image_id": image_id,
            "reason": reason, "detail": detail}  # fmt: skip


def to_table(name: str, records: list[dict[str, Any]], check: bool = True) -> pa.Table:
    """Validate ``records`` and build a table with the schema's arrow types.

    Free-form objects (no declared properties: ``config``, ``augment``) are stored as JSON strings."""
    s = json_schema(name)
    rows = []
    for r in records:
        if check:
            validate(name, r)
        rows.append(_convert(s, r, lambda v: json.dumps(v, sort_keys=True)))
    return pa.Table.from_pylist(rows, schema=arrow_schema(name))


def from_table(name: str, table: pa.Table) -> list[dict[str, Any]]:
    """Rows of ``table`` as records (free-form JSON columns decoded)."""
    s = json_schema(name)
    return [_convert(s, r, json.loads) for r in table.to_pylist()]
