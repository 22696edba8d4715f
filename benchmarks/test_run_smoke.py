"""Smoke run of the whole benchmark suite (`benchmarks.run --quick --profile`), part of `make test`.

Tiny sizes, every section, every profile scenario, the report and the plots, into a temporary
directory: so that the benchmarks cannot rot. It asserts what was written and that the events
arrived, never a time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._common import ROOT, child_env
from benchmarks.report import PLOTS
from benchmarks.run import SECTIONS


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_run_writes_the_report(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--profile", "--out", str(tmp_path)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]

    [result_file] = tmp_path.glob("2*.json")
    results = json.loads(result_file.read_text())
    assert results["errors"] == {}
    for section in SECTIONS:
        assert results[section]["summary"], section
    assert {g["id"] for g in results["goals"]} >= {
        "track_over_floor",
        "throughput_vs_posthog",
        "throughput_vs_posthog_stdlib",
        "throughput_vs_ceiling",
        "cpu_vs_posthog",
        "gil_p99",
    }
    assert all("error" not in p for p in results["profiles"].values()), results["profiles"]

    # Every event of the end-to-end runs arrived, for both libraries.
    for run in results["throughput"]["runs"]:
        assert run["delivered"] == run["n"], run
    for run in results["gil"]["runs"]:
        if run["lib"] != "floor":
            assert run["delivered"] == run["tracked"], run
    for mode in ("off", "async", "blocking"):
        assert results["routes"]["summary"][mode]["errors"] == 0, mode

    markdown = (tmp_path / "latest.md").read_text()
    assert markdown == result_file.with_suffix(".md").read_text()
    assert "## Goals" in markdown
    for name in PLOTS:
        png = tmp_path / f"latest-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"latest-{name}.png" in markdown


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_leaves_the_committed_results_alone() -> None:
    results = ROOT / "benchmarks" / "results"
    committed = {p.name: p.read_bytes() for p in results.glob("latest*")}
    scratch = results / "scratch"
    before = set(scratch.glob("2*.json")) if scratch.exists() else set()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--only",
            "import_cost",
            "--no-profile",
        ],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert {p.name: p.read_bytes() for p in results.glob("latest*")} == committed
    [written] = set(scratch.glob("2*.json")) - before
    assert "import_cost" in json.loads(written.read_text())
    assert (scratch / "latest.md").exists()
