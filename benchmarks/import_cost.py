"""What `import analytics_queue` and its pytest plugin cost a process, against a bare interpreter.

`python -m benchmarks.import_cost [--rounds N]` prints a table; `benchmarks.run` calls `run()`
for its report (section ``import_cost``).

Every figure is a median over rounds that alternate the cases back to back, each in a fresh
interpreter, so that a slow spell of the shared machine hits every case alike:

- wall time of ``python -X importtime -c pass`` (bare) and ``... -c "import analytics_queue"``,
  and the difference;
- ``-X importtime``'s cumulative figure for ``analytics_queue`` and its heaviest imports (the
  modules to make lazy when the figure is too high);
- the modules a deferrable set costs on its own (``urllib3``, ``certifi``, ``urllib.request``,
  ``email.utils``: used only when the first batch is sent or a ``Retry-After`` date is parsed);
- whether ``posthog`` or ``requests`` is loaded by ``import analytics_queue``;
- the wall time of a one-test pytest run with the plugin loaded and with ``-p no:analytics_queue``
  (the plugin's cost to a project whose tests never use its fixture).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import PYTHON, ROOT, child_env, median

DEFERRABLE = ("urllib3", "certifi", "urllib.request", "email.utils")
CHECK_MODULES = (
    "import sys, analytics_queue; "
    "print(','.join(m for m in ('posthog', 'requests', 'urllib3') if m in sys.modules))"
)
_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$")


def _run(args: list[str], cwd: Path = ROOT) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(
        [PYTHON, *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.stderr


def parse_importtime(stderr: str) -> dict[str, Any]:
    """The cumulative µs of the top-level import and of its heaviest imports, from -X importtime."""
    lines: list[tuple[int, int, str]] = []  # (depth, cumulative µs, module)
    for raw in stderr.splitlines():
        match = _LINE.match(raw)
        if match:
            lines.append((len(match.group(3)) // 2, int(match.group(2)), match.group(4)))
    total = {name: cum for depth, cum, name in lines if depth == 0}
    children = sorted(((cum, name) for depth, cum, name in lines if depth in (1, 2)), reverse=True)[
        :10
    ]
    return {"total_us": total, "heaviest": [{"module": n, "us": c} for c, n in children]}


def run(rounds: int = 15, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every case `rounds` times, alternating; return the runs and their medians."""
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        # A project of its own, so that this repository's pytest configuration does not apply.
        (project / "pytest.ini").write_text("[pytest]\n")
        (project / "test_one.py").write_text("def test_one():\n    assert True\n")
        pytest_args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_one.py"]
        cases: dict[str, tuple[list[str], Path]] = {
            "bare": (["-X", "importtime", "-c", "pass"], ROOT),
            "import": (["-X", "importtime", "-c", "import analytics_queue"], ROOT),
            "deferrable": (["-c", "import " + ", ".join(DEFERRABLE)], ROOT),
            "pytest_without_plugin": ([*pytest_args, "-p", "no:analytics_queue"], project),
            "pytest_with_plugin": (pytest_args, project),  # the pytest11 entry point loads it
        }
        _run(["-c", "import analytics_queue"])  # warm the bytecode caches
        runs: dict[str, list[float]] = {case: [] for case in cases}
        importtime_us: list[int] = []
        heaviest: list[dict[str, Any]] = []
        for i in range(rounds):
            for case, (args, cwd) in cases.items():
                elapsed, stderr = _run(args, cwd)
                runs[case].append(elapsed)
                if case == "import":
                    parsed = parse_importtime(stderr)
                    importtime_us.append(parsed["total_us"].get("analytics_queue", 0))
                    if i == rounds // 2:
                        heaviest = parsed["heaviest"]
            log(f"  import cost round {i + 1}/{rounds}")
    loaded = subprocess.run(
        [PYTHON, "-c", CHECK_MODULES],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    ms = {case: median(times) * 1000 for case, times in runs.items()}

    def added_ms(case: str, base: str) -> float:
        """The median of the per-round differences, each round's cases run back to back."""
        return median([a - b for a, b in zip(runs[case], runs[base], strict=True)]) * 1000

    summary = {
        "bare_ms": ms["bare"],
        "import_ms": ms["import"],
        "import_added_ms": added_ms("import", "bare"),
        "importtime_ms": median(importtime_us) / 1000,
        "deferrable_added_ms": added_ms("deferrable", "bare"),
        "pytest_without_plugin_ms": ms["pytest_without_plugin"],
        "pytest_with_plugin_ms": ms["pytest_with_plugin"],
        "plugin_added_ms": added_ms("pytest_with_plugin", "pytest_without_plugin"),
        "loaded_heavy_modules": [m for m in loaded.split(",") if m],
        "rounds": rounds,
    }
    return {"summary": summary, "heaviest_imports": heaviest, "runs_s": runs}


def render(result: dict[str, Any]) -> list[str]:
    """The report's markdown lines for this section."""
    s = result["summary"]
    loaded = ", ".join(s["loaded_heavy_modules"]) or "none of posthog, requests, urllib3"
    out = [
        f"Each case in a fresh interpreter, {s['rounds']} rounds alternating the cases; medians. "
        "Wall time includes the interpreter's start.",
        "",
        "| case | wall time | added |",
        "| --- | ---: | ---: |",
        f"| `python -X importtime -c pass` (bare) | {s['bare_ms']:.1f} ms | |",
        f'| `python -X importtime -c "import analytics_queue"` | {s["import_ms"]:.1f} ms '
        f"| {s['import_added_ms']:+.1f} ms |",
        f"| `import {', '.join(DEFERRABLE)}` alone | | {s['deferrable_added_ms']:+.1f} ms |",
        f"| one-test pytest run, `-p no:analytics_queue` | {s['pytest_without_plugin_ms']:.0f} ms "
        "| |",
        f"| the same with the plugin loaded, fixture unused | {s['pytest_with_plugin_ms']:.0f} ms "
        f"| {s['plugin_added_ms']:+.1f} ms |",
        "",
        f"`-X importtime` cumulative for `analytics_queue`: {s['importtime_ms']:.1f} ms. "
        f"Loaded by `import analytics_queue`: {loaded}.",
        "",
        "Heaviest imports under `analytics_queue` (`-X importtime`, cumulative, one round):",
        "",
    ]
    out += [f"- `{row['module']}`: {row['us'] / 1000:.1f} ms" for row in result["heaviest_imports"]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.import_cost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    result = run(args.rounds, log=lambda msg: print(msg, file=sys.stderr))
    print("\n".join(render(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
