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
    assert s["properties"]["schema_version"]["const"] == schemas.version(name)
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


def test_sample_v2_and_v1_records():
    """v2 drops SconeEval's names from the references; v1 records (older shards) still validate, each
    against its own version, and upgrade to v2."""
    ref_fields = schemas.json_schema("sample", 2)["properties"]["references"]["items"]["properties"]
    assert not {"subject_list", "subject_label"} & set(ref_fields) and schemas.SAMPLE_VERSION == 2
    rec, _ = make_sample("k3", n_refs=2)
    schemas.validate("sample", rec)
    old = dict(rec, schema_version=1)
    old["references"] = [dict(r, subject_list=["cup"], subject_label=["cup"]) for r in rec["references"]]
    schemas.validate("sample", old)
    assert schemas.upgrade("sample", old) == rec and schemas.upgrade("sample", rec) is rec
    with pytest.raises(schemas.SchemaError, match="subject_list"):
        schemas.validate("sample", dict(old, schema_version=2))  # v2 refuses the old names
    with pytest.raises(schemas.SchemaError, match="subject_label"):
        schemas.validate("sample", dict(rec, schema_version=1))  # v1 needs them
    with pytest.raises(schemas.SchemaError, match="schema_version"):
        schemas.validate("sample", dict(rec, schema_version=7))


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


def test_subject_colour_shares_are_optional_and_old_parts_still_read():
    rec = {
        "schema_version": 1, "subject_id": "img-000", "image_id": "img", "label": "cup",
        "box_xyxy": [1.0, 2.0, 30.0, 40.0], "det_score": 1.0, "det_source": "annotation",
        "mask_rle": {"size": [50, 50], "counts": "0"}, "mask_score": 1.0, "mask_source": "grabcut",
        "stability": 1.0, "area_frac": 0.1,
        "attributes": {"color": "mixed", "colors": [{"name": "blue", "share": 0.45}, {"name": "orange", "share": 0.4}],
                       "position": "middle-center", "size_rank": 0},
    }  # fmt: skip
    t = schemas.to_table("subject", [rec])
    colors = t.schema.field("attributes").type.field("colors")
    assert colors.nullable and colors.type == pa.list_(pa.struct([pa.field("name", pa.string(), False),
                                                                  pa.field("share", pa.float64(), False)]))  # fmt: skip
    assert schemas.from_table("subject", t) == [rec]
    old = {**rec, "attributes": {k: v for k, v in rec["attributes"].items() if k != "colors"}}
    schemas.validate("subject", old)
    old_table = pa.Table.from_pylist([old])  # a part written before colours had shares
    assert schemas.from_table("subject", old_table)[0]["attributes"] == old["attributes"]
    with pytest.raises(schemas.SchemaError, match=r"attributes\.colors\[0\]"):
        schemas.validate("subject", {**rec, "attributes": {**rec["attributes"], "colors": [{"name": "red"}]}})


def test_reject_label_and_box_are_optional():
    rec = schemas.reject_record("subjects", "mem://a", "a", "subject_mask_bleeds", "flag 0.47")
    schemas.validate("reject", rec)
    schemas.validate("reject", {**rec, "label": "flag", "box_xyxy": [0.0, 0.0, 235.0, 600.0]})
    with pytest.raises(schemas.SchemaError, match="box_xyxy"):
        schemas.validate("reject", {**rec, "box_xyxy": [0.0, 0.0, 235.0]})
    t = schemas.to_table("reject", [rec])
    assert t.schema.field("box_xyxy").type == pa.list_(pa.float64())
    assert schemas.from_table("reject", t)[0]["box_xyxy"] is None


def test_fast_check_agrees_with_jsonschema_on_valid_and_broken_records():
    """The compiled check decides alone when it accepts: it must never accept what jsonschema rejects."""
    import copy

    import fastjsonschema

    fast = schemas._fast("sample")
    assert fast is not None
    rec, _ = make_sample("k9", n_refs=2)
    rec["references"][0]["candidates"][0].update(area=12.0, colors=[{"name": "red", "share": 0.8}])
    rec["references"][0]["copy_paste"] = 0.4
    rec["target"]["crop_box"] = [0, 0, 10, 10]
    breakages = [
        lambda r: r.update(task="bogus"),
        lambda r: r.update(schema_version=3),
        lambda r: r.update(key="bad key!"),
        lambda r: r.update(extra=1),
        lambda r: r.pop("instruction"),
        lambda r: r.update(instruction=""),
        lambda r: r["references"][0].update(kind="photo"),
        lambda r: r["references"][0]["candidates"][0].update(box_xyxy=[1, 2, 3]),
        lambda r: r["references"][0]["candidates"][0].update(intended="yes"),
        lambda r: r["references"][0]["candidates"][0].update(area=-1),
        lambda r: r["references"][0]["candidates"][0].update(colors=[{"name": "red", "share": 2}]),
        lambda r: r["references"][0]["candidates"][0].update(colors=[{"name": "red"}]),
        lambda r: r["references"][0].update(copy_paste=None),
        lambda r: r["references"][0].update(copy_paste=1.5),
        lambda r: r["references"][0].update(width=0),
        lambda r: r["references"][0].update(member="ref0.png"),
        lambda r: r["target"].update(crop_box=[0, 0, 10]),
        lambda r: r["target"].update(crop_box=None),
        lambda r: r["target"].update(width=1.5),
        lambda r: r.update(references=[]),
    ]
    schemas.validate("sample", rec)
    fast(rec)
    for i, brk in enumerate(breakages):
        bad = copy.deepcopy(rec)
        brk(bad)
        assert not schemas._validator("sample").is_valid(bad), i
        with pytest.raises(fastjsonschema.JsonSchemaException):
            fast(bad)
        with pytest.raises(schemas.SchemaError):
            schemas.validate("sample", bad)


def test_fast_check_only_for_schemas_both_validators_read_alike():
    """Every shipped schema gets the compiled check; a 2020-12-only keyword (which fastjsonschema
    would ignore, accepting what jsonschema rejects) leaves a schema to jsonschema alone."""
    assert all(schemas._fast(name) is not None for name in schemas.RECORDS)
    tuple_items = {
        "type": "object",
        "properties": {"xy": {"type": "array", "prefixItems": [{"type": "number"}]}},
    }
    assert not schemas._same_in_draft07(tuple_items)
    assert not schemas._same_in_draft07({"type": "array", "items": [{"type": "number"}]})
    assert schemas._same_in_draft07({"type": "object", "additionalProperties": False, "properties": {}})
