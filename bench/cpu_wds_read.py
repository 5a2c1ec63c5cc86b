"""Reading a WebDataset source unit by unit: the header pass per tar kept (ours) against redone per
unit (the source as it was: SCAN_CACHE_SIZE = 0). Same tar, same refs, same rows.

    python bench/cpu_wds_read.py --out bench/out/cpu_wds_read.json [--samples 1000] [--unit 16]
"""

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

from scone_data.sources import wds
from scone_data.sources.wds import WebDatasetSource


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--unit", type=int, default=16, help="refs per read() call (runtime.unit_size)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "shard.tar")
        with tarfile.open(path, "w") as tf:
            for i in range(a.samples):
                for ext, data in (("jpg", os.urandom(20_000)), ("txt", b"a caption")):
                    ti = tarfile.TarInfo(f"{i:06d}.{ext}")
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
        src = WebDatasetSource(name="w", paths=path)
        rows, res, keep = {}, {}, wds.SCAN_CACHE_SIZE
        try:
            for name, size in (("rescan per unit", 0), ("kept header pass", keep)):
                wds.SCAN_CACHE_SIZE = size
                wds._SCANS.clear()
                t0 = time.perf_counter()
                refs = src.list_refs()
                got = [src.read(refs[s : s + a.unit])["image_bytes"] for s in range(0, len(refs), a.unit)]
                res[name] = time.perf_counter() - t0
                rows[name] = [b for part in got for b in part]
        finally:
            wds.SCAN_CACHE_SIZE = keep
    assert rows["rescan per unit"] == rows["kept header pass"]
    out = {"samples": a.samples, "unit": a.unit, "seconds": res,
           "speedup": res["rescan per unit"] / res["kept header pass"]}  # fmt: skip
    print(f"{'path':18} {'seconds':>8}")
    for k, v in res.items():
        print(f"{k:18} {v:8.2f}")
    print(f"{a.samples} samples, units of {a.unit}: kept header pass {out['speedup']:.1f}x faster")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
