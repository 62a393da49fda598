"""`make bench` keeps working: every benchmark runs on tiny inputs (`run_benchmarks.py --smoke`).

The smoke run uses a random shallow network, crops and one repeat, so it checks that each
benchmark imports the engine, runs every path and writes its JSON and the README; it measures
nothing worth keeping and writes nothing into benchmarks/results. No timing is asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def snapshot(folder: Path) -> dict:
    return {path.name: (path.stat().st_mtime_ns, path.stat().st_size) for path in folder.iterdir()}


def test_every_benchmark_runs_in_a_smoke_run_and_leaves_the_results_alone():
    results_before = snapshot(BENCHMARKS / "results")
    completed = subprocess.run([sys.executable, str(BENCHMARKS / "run_benchmarks.py"), "--smoke"],
                               capture_output=True, text=True, timeout=1800, cwd=str(ROOT))
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    reported = {line.split()[1] for line in completed.stdout.splitlines() if line.startswith("ok ")}
    # every bench_<name>.py in the folder, so a benchmark left out of run_benchmarks.py fails here
    expected = {path.stem[len("bench_"):] for path in BENCHMARKS.glob("bench_*.py")} | {"README"}
    assert expected <= reported, f"not reported: {sorted(expected - reported)}\n{output[-3000:]}"
    assert snapshot(BENCHMARKS / "results") == results_before


def test_a_failing_benchmark_fails_the_run(tmp_path):
    """A benchmark that cannot write its JSON (a folder stands where the file goes) fails the run."""
    (tmp_path / "thresholds.json").mkdir()
    completed = subprocess.run([sys.executable, str(BENCHMARKS / "run_benchmarks.py"), "--smoke", "--only",
                                "thresholds", "--results", str(tmp_path)], capture_output=True, text=True,
                               timeout=120, cwd=str(ROOT))
    assert completed.returncode != 0
    assert "FAILED thresholds" in completed.stdout
