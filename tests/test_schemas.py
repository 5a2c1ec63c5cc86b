"""The record schemas: files load, arrow schemas follow from them, bad records are refused by field."""

import re
import tomllib

import pyarrow as pa
import pytest
from tests_helpers import make_sample

from scone_data import schemas


@pytest.mark.parametrize("name", schemas.RECORDS)
def test_every_schema_loads_and_derives_an_arrow_schema(name):
    s = schemas.json_schema(name)
    assert s["properties"]["schema_version"]["const"] == 1
    arrow = schemas.arrow_schema(name)
    assert [f.name for f in arrow] == list(s["properties"])
    for req in s["required"]:
        assert not arrow.field(req).nullable or "null" in str(s["properties"][req].get("type"))


def test_malformed_sample_is_refused_naming_the_field():
    rec, _ = make_sample("k1")
    rec["references"][0]["member"] = "ref0.png"
    with pytest.raises(schemas.SchemaError, match=r"references\[0\]\.member"):
        schemas.validate("sample", rec)
    rec, _ = make_sample("k1")
    del rec["target"]["boxes"]
    with pytest.raises(schemas.SchemaError, match=r"target: 'boxes' is a required property"):
        schemas.validate("sample", rec)
    rec, _ = make_sample("k1")
    rec["task"] = "composition_triple"
    with pytest.raises(schemas.SchemaError, match=r"^invalid sample record: task:"):
        schemas.validate("sample", rec)


def test_table_round_trip_keeps_free_form_objects():
    rec, _ = make_sample("k2")
    rec["references"][0]["augment"] = {"flip": True, "scale": 0.8}
    t = schemas.to_table("sample", [rec])
    assert t.schema.field("references").type.value_type.field("augment").type == pa.string()
    assert schemas.from_table("sample", t) == [rec]


def test_pyproject_lists_every_package(repo_root):
    """Packages are listed by hand in pyproject (two live outside scone_data/): none may be missed."""
    cfg = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    dirs = {v: k for k, v in cfg["package-dir"].items()}
    for init in repo_root.glob("**/__init__.py"):
        rel = init.parent.relative_to(repo_root)
        top = rel.parts[0]
        if top not in dirs or any(re.match(r"^\.|__pycache__", p) for p in rel.parts):
            continue
        name = ".".join([dirs[top], *rel.parts[1:]])
        assert name in listed, f"{rel} has an __init__.py but {name} is not in pyproject's packages"
