"""import: Scone-S2I parquet and X2I/UNO-style jsonl into shards that pass `validate`."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from interop_helpers import image_bytes, run_cli

from scone_data.interop.export import export_scone_parquet
from scone_data.interop.imports import field_map, import_dataset
from scone_data.interop.reader import InteropError, iter_samples
from scone_data.shards.validate import validate_output


def _reasons(out) -> list[str]:
    return pq.read_table(out / "rejects.parquet").column("reason").to_pylist()


def test_scone_parquet_round_trip(tmp_path):
    jpg = [image_bytes(i, ext=".jpg") for i in range(4)]
    png = image_bytes(9, w=30, h=50)
    rows = [
        {"image": [jpg[0], jpg[1]], "instruction": "Put the subject of image 1 on a beach."},
        {"image": [jpg[0], png, jpg[2]], "instruction": "The cat from image 1 and the cup from image 2."},
        {"image": [jpg[3]], "instruction": "only one image"},  # no reference
        {"image": [b"not an image", jpg[2]], "instruction": "broken reference"},
        {"image": [jpg[0], jpg[1]], "instruction": "Put the subject of image 1 on a beach."},  # duplicate
    ]
    src = tmp_path / "scone.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    out = tmp_path / "imported"
    m = import_dataset([src], out, "scone-parquet", samples_per_shard=1)  # layout detected: scone-s2i
    assert m["config"]["import"]["layout"] == "scone-s2i"
    assert validate_output(out) == []
    assert m["tasks"] == {"composition_multi": 1, "composition_single": 1} and len(m["shards"]) == 2
    assert sorted(_reasons(out)) == ["duplicate_sample", "no_references", "not_an_image"]
    recs = list(iter_samples(out))
    rec, members = recs[0]
    assert rec["provenance"]["source"] == "scone.parquet#0".join(["import:scone-parquet:", ""])
    ref = rec["references"][0]
    assert ref["candidates"] == [
        {
            "subject_id": f"{rec['key']}-r0",
            "label": "subject",
            "box_xyxy": [0.0, 0.0, 48.0, 40.0],
            "intended": True,
            "source_image_id": ref["candidates"][0]["source_image_id"],
        }
    ]
    assert rec["target"]["boxes"][0]["box_xyxy"] == [0.0, 0.0, 48.0, 40.0]
    assert members["ref0.jpg"] == jpg[0] and members["target.jpg"] == jpg[1]  # JPEGs kept byte for byte
    png_ref = recs[1][0]["references"][1]
    assert recs[1][1]["ref1.jpg"][:3] == b"\xff\xd8\xff" and (png_ref["width"], png_ref["height"]) == (30, 50)
    # and back out: the same bytes in Scone's column layout
    export_scone_parquet(out, tmp_path / "back", split="all")
    back = pq.read_table(
        min((tmp_path / "back" / "parquet_data" / "scone_data").glob("*.parquet"))
    ).to_pylist()
    assert back[0]["image"] == [jpg[0], jpg[1]] and back[0]["instruction"] == rows[0]["instruction"]


def _write_jsonl(path, objs):
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")


def test_x2i_jsonl(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(4):
        (imgs / f"{i}.png").write_bytes(image_bytes(20 + i))
    _write_jsonl(
        tmp_path / "x2i.jsonl",
        [
            {
                "task_type": "subject",
                "instruction": "The dog in <img><|image_1|></img> sits next to the mug in <img><|image_2|></img>.",
                "input_images": ["imgs/0.png", "imgs/1.png"],
                "output_image": "imgs/2.png",
                "labels": ["dog", "mug"],
            },
            {"instruction": "x", "input_images": ["imgs/missing.png"], "output_image": "imgs/3.png"},
            {"instruction": "no images at all"},
            "{not json",
            {"instruction": "  ", "input_images": ["imgs/0.png"], "output_image": "imgs/3.png"},
            {"instruction": "four refs", "input_images": ["imgs/0.png"] * 4, "output_image": "imgs/3.png"},
        ],
    )
    fm = field_map("jsonl", "x2i", ["label=labels"])
    m = import_dataset([tmp_path / "x2i.jsonl"], tmp_path / "out", "jsonl", fm, split="val")
    assert validate_output(tmp_path / "out") == []
    assert m["splits"] == {"val": 1} and m["images"] == 3
    assert sorted(_reasons(tmp_path / "out")) == [
        "empty_instruction",
        "image_missing",
        "invalid_row",
        "missing_field",
        "too_many_references",
    ]
    ((rec, _),) = iter_samples(tmp_path / "out")
    assert rec["instruction"] == "The dog in image 1 sits next to the mug in image 2."
    assert rec["task"] == "composition_multi" and rec["schema_version"] == 2
    assert [[c["label"] for c in r["candidates"]] for r in rec["references"]] == [["dog"], ["mug"]]
    assert [b["label"] for b in rec["target"]["boxes"]] == ["dog", "mug"]


def test_uno_style_jsonl_through_the_cli_with_log_json(tmp_path, capsys):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(image_bytes(40 + i, ext=".jpg"))
    _write_jsonl(
        tmp_path / "uno.jsonl", [{"img_path1": "0.jpg", "img_path2": "1.jpg", "tgt": "2.jpg", "prompt": "p"}]
    )
    argv = ["import", str(tmp_path / "uno.jsonl"), "-o", str(tmp_path / "o"), "--format", "jsonl"]
    argv += [
        "--field",
        "references=img_path1,img_path2",
        "--field",
        "target=tgt",
        "--label",
        "toy",
        "--log-json",
    ]
    assert run_cli(argv) == 0
    cap = capsys.readouterr()
    events = [json.loads(line) for line in cap.err.splitlines()]
    assert [e["event"] for e in events] == ["start", "progress", "summary"]
    assert all(e["command"] == "import" for e in events)
    assert events[1]["done"] == events[1]["total"] == 1 and events[-1]["ok"] is True
    assert events[-1]["samples"] == 1 and events[-1]["tasks"] == {"composition_multi": 1}
    assert "samples" in cap.out and "composition_multi" in cap.out  # the table for people
    assert validate_output(tmp_path / "o") == []
    ((rec, _),) = iter_samples(tmp_path / "o")
    assert [r["candidates"][0]["label"] for r in rec["references"]] == ["toy", "toy"]


def test_bad_settings_are_reported_at_once(tmp_path, capsys):
    with pytest.raises(InteropError) as e:
        field_map("jsonl", "x2i", ["images=image", "nonsense=1"])
    assert e.value.code == 2 and "nonsense" in str(e.value) and "not both" in str(e.value)
    assert (
        run_cli(["import", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o"), "--format", "jsonl"]) == 2
    )
    assert "no such file" in capsys.readouterr().err


def test_uno_json_array_detected(tmp_path, capsys):
    """UNO's training file: one JSON array, image_paths or a single image_path, image_tgt_path, prompt."""
    for i in range(4):
        (tmp_path / f"{i}.jpg").write_bytes(image_bytes(60 + i, ext=".jpg"))
    rows = [
        {
            "prompt": "a toy and a mug on a desk",
            "image_tgt_path": "./2.jpg",
            "image_paths": ["./0.jpg", "1.jpg"],
        },
        {"prompt": "a toy in the jungle", "image_tgt_path": "3.jpg", "image_path": "0.jpg"},
        {"prompt": "gone", "image_tgt_path": "3.jpg", "image_path": "missing.jpg"},
    ]
    (tmp_path / "uno.json").write_text(json.dumps(rows, indent=2))
    argv = [
        "import",
        str(tmp_path / "uno.json"),
        "-o",
        str(tmp_path / "o"),
        "--format",
        "json",
        "--no-progress",
    ]
    assert run_cli(argv) == 0
    assert "uno" in capsys.readouterr().out  # the detected layout is in the summary
    assert validate_output(tmp_path / "o") == []
    recs = {rec["instruction"]: rec for rec, _ in iter_samples(tmp_path / "o")}
    assert recs["a toy and a mug on a desk"]["task"] == "composition_multi"
    assert len(recs["a toy in the jungle"]["references"]) == 1  # the image_path singleton
    assert _reasons(tmp_path / "o") == ["image_missing"]
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["config"]["import"]["layout"] == "uno" and m["tasks"] == {
        "composition_multi": 1,
        "composition_single": 1,
    }


def test_layout_detection_and_total_rejection(tmp_path, capsys):
    (tmp_path / "0.png").write_bytes(image_bytes(70))
    x2i = {
        "instruction": "the dog in <img><|image_1|></img>",
        "input_images": ["0.png"],
        "output_image": "0.png",
    }
    _write_jsonl(tmp_path / "x2i.jsonl", [x2i])
    m = import_dataset([tmp_path / "x2i.jsonl"], tmp_path / "x", "jsonl")  # no preset named
    assert m["config"]["import"]["layout"] == "x2i" and m["samples"] == 1
    ((rec, _),) = iter_samples(tmp_path / "x")
    assert rec["instruction"] == "the dog in image 1"
    # no known layout: refused before anything is written, naming the fields found
    _write_jsonl(tmp_path / "odd.jsonl", [{"src": "0.png", "dst": "0.png", "meta": {"text": "t"}}])
    argv = ["import", str(tmp_path / "odd.jsonl"), "-o", str(tmp_path / "odd"), "--format", "jsonl"]
    assert run_cli(argv) == 2 and not (tmp_path / "odd").exists()
    err = capsys.readouterr().err
    assert (
        "its rows have the fields dst, meta, meta.text, src;" in err and "uno (image_paths|image_path" in err
    )
    fields = ["references=src", "target=dst", "instruction=meta.text"]
    assert run_cli(argv + [x for f in fields for x in ("--field", f)]) == 0
    m = json.loads((tmp_path / "odd" / "manifest.json").read_text())
    assert m["config"]["import"]["layout"] == "custom" and not m["config"]["import"]["fields"]["placeholders"]
    # every row rejected: the output is written (its rejects say why) and the exit code is 1
    _write_jsonl(tmp_path / "gone.jsonl", [dict(x2i, output_image="nope.png")] * 2)
    argv = ["import", str(tmp_path / "gone.jsonl"), "-o", str(tmp_path / "g"), "--format", "jsonl"]
    assert run_cli(argv) == 1
    assert "error: every row was rejected (image_missing: 2;" in capsys.readouterr().err
    assert _reasons(tmp_path / "g") == ["image_missing", "image_missing"]
