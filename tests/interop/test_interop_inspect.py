"""inspect --html: the page rendered by headless Chromium, checked in its DOM and its screenshot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from interop_helpers import run_cli
from PIL import Image

from scone_data.pairs.config import TASKS

CHROMIUM_TIMEOUT_S = 120  # a cold first start of Chromium on 2 cores takes a few seconds; this is generous


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium: installed here when missing; the tests skip only when that install fails."""
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        try:
            subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=300, env=env)
            subprocess.run(
                ["apt-get", "install", "-y", "chromium"],
                check=True,
                capture_output=True,
                timeout=600,
                env=env,
            )
        except (OSError, subprocess.SubprocessError) as e:
            pytest.skip(f"chromium is not installed and `apt-get install -y chromium` failed: {e}")
        exe = shutil.which("chromium")
        if exe is None:
            pytest.skip("apt-get install -y chromium ran but no chromium executable is on PATH")
    return exe


def _chromium(exe: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, timeout=CHROMIUM_TIMEOUT_S, text=True)


def test_html_report_in_chromium(demo_output, tmp_path, chromium, capsys):
    html = tmp_path / "report.html"
    rc = run_cli(["inspect", str(demo_output), "--html", str(html), "--per-task", "2", "--log-json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert summary["event"] == "summary" and summary["cards"] == 12 and summary["bank_subjects"] == 24
    text = html.read_text()
    assert not re.search(r'(src|href)="(https?:|//)', text)  # self-contained

    dom = _chromium(chromium, "--dump-dom", html.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    cards = re.findall(r'<article class="card[^"]*" data-task="([a-z_]+)" data-key="([0-9a-f]+)"', dom.stdout)
    assert len(cards) == 12 and {t for t, _ in cards} == set(TASKS)
    assert all(n == 2 for n in summary["cards_per_task"].values())
    for task in TASKS:
        assert f'id="task-{task}"' in dom.stdout
    assert dom.stdout.count('<figure class="subj"') == 24
    for title in ("Task mix", "Intended subjects by label", "Candidates per reference", "Reject reasons"):
        assert title in dom.stdout
    # every card: one figure per reference + the target, the intended candidate drawn solid green
    assert dom.stdout.count('stroke="#16a34a"') >= 12

    png = tmp_path / "shot.png"
    shot = _chromium(chromium, f"--screenshot={png}", "--window-size=1280,2000", html.as_uri())
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    px = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32)
    assert px.shape == (2000, 1280, 3)
    assert px.std() > 20  # not a blank page
    tiles = px[:1000].reshape(10, 100, 8, 160, 3).std(axis=(1, 3, 4))
    assert (tiles > 10).mean() > 0.3  # content across the top half, not one lone element


def test_inspect_without_html_prints_counts(demo_output, capsys):
    assert run_cli(["inspect", str(demo_output), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "samples" in out and "composition_single" in out
