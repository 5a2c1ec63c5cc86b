"""A catalogue of hostile inputs, each run through a whole build (in-process executor).

One build reads the toy corpus (so samples are still made) beside a hostile COCO json, a hostile
folder, hostile tars and hostile parquet files. Every case must come out as a reject with its
reason in ``rejects.parquet``; the run must finish and validate; nothing may be written outside
the output directory (the whole sandbox, the working directory included, is snapshotted before and
after). Parquet files with missing columns or wrong types are bad *settings*: a second build must
refuse them all at once, before writing anything.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import uuid
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_reliability_support import make_toy_coco, toy_config

from scone_data.imageio import encode_png
from scone_data.runtime.build import build
from scone_data.runtime.config import ConfigError
from scone_data.shards.validate import validate_output

MAX_MEMBER = 20_000  # the tar source's max_member_bytes in this test


def _png(w=96, h=96, seed=1) -> bytes:
    return encode_png(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _bomb_png(w=100_000, h=100_000) -> bytes:
    """A valid 8x8 PNG whose header claims w x h pixels."""
    data = bytearray(_png(8, 8))
    ihdr = struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


# (source, where, reason code); where: a suffix of the reject's uri (under the source's folder),
# "=<uri>", "subject:<label>" or "orphan:<annotation index>"
CASES: list[tuple[str, str, str]] = []


def case(source: str, where: str, reason: str) -> None:
    CASES.append((source, where, reason))


def _hostile_coco(root: Path, outside: Path) -> Path:
    root.mkdir()
    (root / "img.png").write_bytes(_png())
    (root / "tiny.png").write_bytes(_png(8, 8))
    good = _png(seed=3)
    (root / "cut.png").write_bytes(good[: len(good) // 2])
    (root / "bomb.png").write_bytes(_bomb_png())
    (root / "text.png").write_bytes(b"definitely not an image\n")
    (root / "empty.png").write_bytes(b"")
    rng = np.random.default_rng(0)
    anns = {  # label -> (bbox, segmentation, iscrowd), all on image 1
        "good": ([10, 10, 40, 40], None, 0),
        "outside": ([500, 500, 10, 10], None, 0),
        "nanbox": ([float("nan"), 1, 10, 10], None, 0),
        "infbox": ([1, 1, float("inf"), 10], None, 0),
        "negsize": ([10, 10, -5, 20], None, 0),
        "shortbox": ([1, 2, 3], None, 0),
        "hugepoly": (None, [[0, 0, 1e12, 0, 1e12, 1e12, 0, 1e12]], 0),
        "farpoly": (None, [[1e12, 1e12, 1e12 + 5, 1e12, 1e12, 1e12 + 5]], 0),
        "manypoints": (None, [(rng.random(400_000) * 90).tolist()], 0),
        "oddpoly": (None, [[1, 2, 3, 4, 5, 6, 7]], 0),
        "badrle": (None, {"size": [96, 96], "counts": [1, 2]}, 0),
        "rlesize": (None, {"size": [10, 10], "counts": [100]}, 0),
        "crowd": ([5, 5, 30, 30], None, 1),
    }
    expect = {"outside": "outside_image", "nanbox": "non_finite_box", "infbox": "non_finite_box",
              "negsize": "bad_box_size", "shortbox": "bad_box", "hugepoly": "bad_polygon",
              "farpoly": "bad_polygon", "manypoints": "bad_polygon", "oddpoly": "bad_polygon",
              "badrle": "bad_rle", "rlesize": "mask_size_mismatch", "crowd": "crowd"}  # fmt: skip
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(anns)]
    annotations = []
    for i, (bbox, seg, crowd) in enumerate(anns.values()):
        a = {"id": i + 1, "image_id": 1, "category_id": i + 1, "iscrowd": crowd}
        if bbox is not None:
            a["bbox"] = bbox
        if seg is not None:
            a["segmentation"] = seg
        annotations.append(a)
    for label, reason in expect.items():
        case("hc", f"subject:{label}", f"subject_{reason}")
    n = len(annotations)
    annotations += [
        {"id": 901, "image_id": 999, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"id": 902, "image_id": 1, "category_id": 77, "bbox": [1, 1, 5, 5]},
        "junk",
    ]
    case("hc", f"orphan:{n}", "unknown_image_id")
    case("hc", f"orphan:{n + 1}", "unknown_category")
    case("hc", f"orphan:{n + 2}", "bad_annotation")
    images = [
        {"id": 1, "file_name": "img.png"},
        {"id": 1, "file_name": "img.png"},  # duplicate id
        {"id": 3, "file_name": os.path.relpath(outside, root)},  # ../.. out of image_root
        {"id": 4, "file_name": "/etc/hostname"},  # absolute path
        {"id": 5, "file_name": "missing.png"},
        "not a dict",
        {"id": 7, "file_name": None},
        {"id": 8, "file_name": "tiny.png"},
        {"id": 9, "file_name": "cut.png"},
        {"id": 10, "file_name": "bomb.png"},
        {"id": 11, "file_name": "text.png"},
        {"id": 12, "file_name": "empty.png"},
    ]
    case("hc", "#images[1]", "duplicate_image_id")
    case("hc", f"={outside}", "path_outside_root")
    case("hc", "=/etc/hostname", "path_outside_root")
    case("hc", "/missing.png", "missing_file")
    case("hc", "#images[5]", "bad_image_entry")
    case("hc", "#images[6]", "bad_image_entry")
    for name, reason in [("tiny.png", "too_small"), ("cut.png", "truncated"), ("bomb.png", "too_many_pixels"),
                         ("text.png", "not_an_image"), ("empty.png", "empty_file")]:  # fmt: skip
        case("hc", f"/{name}", reason)
    path = root / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return path


def _hostile_folder(root: Path, outside: Path) -> None:
    (root / "real").mkdir(parents=True)
    (root / "README.md").write_text("not data\n")
    os.symlink(outside, root / "escape.png")
    os.symlink(root / "real", root / "dirlink")
    (root / "real" / "plain.png").write_bytes(_png(seed=5))  # fine, but no annotations
    case("hf", "/README.md", "unsupported_extension")
    case("hf", "/escape.png", "symlink_outside_root")
    case("hf", "/dirlink", "symlinked_dir")
    case("hf", "/real/plain.png", "no_subjects")


def _add(tf, name, data=b"", kind=tarfile.REGTYPE, link=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _hostile_tars(root: Path, abs_target: Path) -> None:
    root.mkdir()
    img = _png(64, 64, seed=7)
    with tarfile.open(root / "hostile.tar", "w") as tf:
        for name, data, kind, link in [
            ("../evil.png", img, tarfile.REGTYPE, ""),
            (str(abs_target), img, tarfile.REGTYPE, ""),
            ("sym.png", b"", tarfile.SYMTYPE, "/etc/passwd"),
            ("hard.png", b"", tarfile.LNKTYPE, "nojson.png"),
            ("fifo.png", b"", tarfile.FIFOTYPE, ""),
            ("dup.png", img, tarfile.REGTYPE, ""),
            ("dup.png", img, tarfile.REGTYPE, ""),
            ("onlyjson.json", b'{"caption": "no image here"}', tarfile.REGTYPE, ""),
            ("badjson.png", img, tarfile.REGTYPE, ""),
            ("badjson.json", b"[1, 2]", tarfile.REGTYPE, ""),
            ("notjson.png", img, tarfile.REGTYPE, ""),
            ("notjson.json", b"{not json", tarfile.REGTYPE, ""),
            ("big.png", img + b"\0" * MAX_MEMBER, tarfile.REGTYPE, ""),
            ("nojson.png", img, tarfile.REGTYPE, ""),
        ]:
            _add(tf, name, data, kind, link)
    for key, reason in [("#../evil", "unsafe_path"), (f"#{abs_target.with_suffix('')}", "unsafe_path"),
                        ("#sym", "link_member"), ("#hard", "link_member"), ("#fifo", "special_member"),
                        ("#dup", "duplicate_member"), ("#onlyjson", "no_image"), ("#badjson", "bad_json"),
                        ("#notjson", "bad_json"), ("#big", "member_too_large"),
                        ("#nojson", "no_subjects")]:  # fmt: skip
        case("ht", "hostile.tar" + key, reason)
    full = io.BytesIO()
    with tarfile.open(fileobj=full, mode="w") as tf:
        _add(tf, "a.png", _png(64, 64, seed=8))
        _add(tf, "b.png", _png(64, 64, seed=9))
    (root / "truncated.tar").write_bytes(full.getvalue()[: 512 + 1000])  # cut inside a.png's data
    (root / "notatar.tar").write_bytes(b"\x89PNG but not a tar at all" * 40)
    case("ht", "truncated.tar#a", "truncated_tar")
    case("ht", "notatar.tar#!unreadable", "unreadable_tar")


def _hostile_parquet(root: Path, outside: Path) -> None:
    root.mkdir()
    pq.write_table(
        pa.table({"img": pa.array([None, b"", b"garbage bytes", _png(seed=11)], pa.binary())}),
        root / "bytes.parquet",
    )
    (root / "corrupt.parquet").write_bytes(b"PAR1 this is no parquet footer")
    for i, reason in enumerate(["missing_image", "empty_file", "not_an_image", "no_subjects"]):
        case("hp", f"bytes.parquet#row={i}", reason)
    case("hp", "corrupt.parquet#!unreadable", "unreadable_file")
    (root / "paths").mkdir()
    pq.write_table(pa.table({"p": [os.path.relpath(outside, root / "paths"), "/etc/hostname"]}),
                   root / "paths" / "paths.parquet")  # fmt: skip
    case("hpp", "paths.parquet#row=0", "path_outside_root")
    case("hpp", "paths.parquet#row=1", "path_outside_root")


def _snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            continue
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p == skip:
                continue
            st = p.lstat()
            out[str(p)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def _matches(rec: dict, source_dirs: dict[str, Path], source: str, where: str) -> bool:
    uri = rec["uri"]
    if where.startswith("subject:"):
        return rec["stage"] == "subjects" and rec["detail"].split(" ")[0] == where[8:]
    if where.startswith("orphan:"):
        return uri.endswith(f"#annotations[{where[7:]}]")
    if where.startswith("="):
        return uri == where[1:]
    return str(source_dirs[source]) in uri and uri.endswith(where)


def test_hostile_catalogue_builds_and_rejects_every_case(tmp_path, monkeypatch):
    CASES.clear()
    sandbox = tmp_path / "sandbox"
    (sandbox / "cwd").mkdir(parents=True)
    monkeypatch.chdir(sandbox / "cwd")  # a relative write escaping the output would land here
    secret = sandbox / "secret.png"  # outside every source root
    secret.write_bytes(_png(seed=2))
    abs_target = Path(f"/tmp/scone-evil-{uuid.uuid4().hex}.png")
    coco = make_toy_coco(sandbox / "toy", n=4)
    dirs = {"hc": sandbox / "hc", "hf": sandbox / "hf", "ht": sandbox / "ht", "hp": sandbox / "hp",
            "hpp": sandbox / "hp" / "paths"}  # fmt: skip
    hc = _hostile_coco(dirs["hc"], secret)
    _hostile_folder(dirs["hf"], secret)
    _hostile_tars(dirs["ht"], abs_target)
    _hostile_parquet(dirs["hp"], secret)
    assert len(CASES) == 50  # the whole catalogue built above: a case that silently drops out is noticed
    out = sandbox / "out"
    cfg = toy_config(coco, out)
    cfg["sources"] += [
        {"type": "coco", "name": "hc", "annotations": str(hc)},
        {"type": "folder", "name": "hf", "root": str(dirs["hf"])},
        {
            "type": "webdataset",
            "name": "ht",
            "paths": str(dirs["ht"] / "*.tar"),
            "max_member_bytes": MAX_MEMBER,
        },
        {"type": "parquet", "name": "hp", "paths": str(dirs["hp"] / "*.parquet"), "image_column": "img"},
        {"type": "parquet", "name": "hpp", "paths": str(dirs["hpp"] / "paths.parquet"), "path_column": "p"},
    ]
    out.mkdir()  # created first, so only its own contents may change
    before = _snapshot(tmp_path, out)
    manifest = build(cfg)
    assert _snapshot(tmp_path, out) == before, "something was written outside the output directory"
    assert not abs_target.exists() and not (sandbox / "evil.png").exists()
    assert manifest["samples"] > 0  # the good source still made its samples
    assert validate_output(out) == []
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    missing = []
    for source, where, reason in CASES:
        hits = [r for r in rejects if _matches(r, dirs, source, where)]
        if [r["reason"] for r in hits] != [reason]:
            missing.append((source, where, reason, [(r["reason"], r["detail"][:60]) for r in hits]))
    assert not missing, missing
    for r in rejects:  # every reject says why, as a short code
        assert r["reason"] and r["reason"].replace("_", "").isalnum(), r


@pytest.mark.parametrize(
    "columns,problem",
    [
        ({"image_column": "nope"}, "column 'nope' not in"),
        ({"image_column": "n"}, "column 'n'"),
        ({"image_column": "img", "caption_column": "n"}, "caption_column: column 'n'"),
    ],
)
def test_parquet_with_missing_or_mistyped_columns_is_refused_before_any_work(tmp_path, columns, problem):
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"img": pa.array([_png()], pa.binary()), "n": [3]}), f)
    coco = make_toy_coco(tmp_path / "toy", n=2)
    out = tmp_path / "out"
    cfg = toy_config(coco, out)
    cfg["sources"].append({"type": "parquet", "name": "bad", "paths": str(f), **columns})
    with pytest.raises(ConfigError) as e:
        build(cfg)
    assert problem in str(e.value) and "sources[1]" in str(e.value)
    assert not out.exists()  # refused before any work
