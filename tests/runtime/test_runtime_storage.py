"""runtime/storage.py without a store: which paths are URIs, and StorePath's names (no request)."""

from pathlib import Path, PurePosixPath

from scone_data.runtime import storage
from scone_data.sources.base import abspath, is_within, normpath, resolve_path


def test_local_paths_stay_paths():
    assert storage.path("out/demo") == Path("out/demo") and isinstance(storage.path("x"), Path)
    assert storage.path("file:///tmp/out") == Path("/tmp/out")
    assert not storage.is_uri("pkg://skimage/data") and not storage.is_uri("/a/b") and not storage.is_uri("")
    assert storage.is_uri("s3://b/k") and storage.is_uri("gs://b/k")


def test_store_path_names():
    p = storage.path("s3://bucket/out/")
    assert isinstance(p, storage.StorePath) and str(p) == "s3://bucket/out"
    tar = p / "shards" / "train-00000.tar"
    assert str(tar) == "s3://bucket/out/shards/train-00000.tar"
    assert (tar.name, tar.stem, tar.suffix) == ("train-00000.tar", "train-00000", ".tar")
    assert str(tar.with_suffix(".parquet")) == "s3://bucket/out/shards/train-00000.parquet"
    assert (
        tar.parent.parent == p
        and p in tar.parents
        and tar.relative_to(p) == PurePosixPath("shards/train-00000.tar")
    )
    assert tar.absolute() is tar and storage.path(tar) is tar and p != Path("s3:/bucket/out")


def test_source_helpers_take_uris():
    assert resolve_path("s3://b/photos", "/cwd") == "s3://b/photos" and abspath("s3://b/x") == "s3://b/x"
    assert normpath("s3://b/a/../c") == "s3://b/c"
    assert is_within("s3://b/coco/images/x.jpg", "s3://b/coco/images")
    assert not is_within("s3://b/coco/../other/x.jpg", "s3://b/coco") and not is_within(
        "s3://b/cocoa/x", "s3://b/coco"
    )
