"""Run the benchmarks (``make bench``) and write benchmarks/results/README.md from their JSON.

Each bench_<name>.py of this folder runs in its own process, one after the other (they would compete
for the cores), and writes <results>/<name>.json; each takes --smoke and --results DIR
(common.add_common_arguments). bench_gpu.py runs too where PyTorch sees a CUDA GPU.

    .venv/bin/python benchmarks/run_benchmarks.py [--only inference memory] [--table-only]
    .venv/bin/python benchmarks/run_benchmarks.py --smoke

``--smoke`` runs every benchmark (bench_gpu.py on the CPU when there is no GPU) on tiny inputs with
a random shallow network and one repeat, into a temporary folder unless --results says otherwise
(benchmarks/results is left alone), writes the README there too, prints ``ok <name>`` for each benchmark that ran, and exits
non-zero when any failed: ``make test`` runs it (Testing/test_benchmarks_smoke.py), so a change
that breaks a benchmark fails the tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS  # noqa: E402
from results_readme import readme  # noqa: E402

# Known benchmarks in this order, then any other bench_<name>.py of the folder: a new benchmark runs
# (and is smoke-tested) without being listed here.
ORDER = ["inference", "memory", "training", "thresholds", "threshold_update", "gpu"]
BENCHMARKS = ([name for name in ORDER if (HERE / f"bench_{name}.py").exists()]
              + sorted(path.stem[len("bench_"):] for path in HERE.glob("bench_*.py")
                       if path.stem[len("bench_"):] not in ORDER))
# The 25-layer network would take ~25 min for a 512^2 x 300 CT on 2 cores; memory does not depend on
# the depth (features, head and slabs are sized by width and classes), so make bench measures it
# with 2 conv layers.
ARGUMENTS = {"memory": ["--layers", "2"]}
TIMEOUT_SECONDS = {"smoke": 600, "full": 3 * 3600}  # guards against hangs, not timings: a loaded machine is slow
SMOKE_PARALLEL = 2


def default_benchmarks() -> list:
    import torch

    return BENCHMARKS if torch.cuda.is_available() else [n for n in BENCHMARKS if n != "gpu"]


def run(name: str, results: Path, smoke: bool) -> bool:
    """One benchmark in its own process; True when it exited 0 and wrote its JSON."""
    script = HERE / f"bench_{name}.py"
    command = [sys.executable, str(script), "--results", str(results)] + ARGUMENTS.get(name, [])
    environment = None
    if smoke:
        command.append("--smoke")
        # smoke runs go two at a time (mostly single-threaded Python start-up): one thread each
        environment = dict(os.environ, OMP_NUM_THREADS="1", MULTITASKSEG_THREADS="1")
    else:
        print(f"== {script.name}", flush=True)
    start = time.perf_counter()
    try:
        # a smoke run's output is shown only when it fails
        completed = subprocess.run(command, timeout=TIMEOUT_SECONDS["smoke" if smoke else "full"],
                                   capture_output=smoke, text=True, env=environment)
        failed = completed.returncode != 0
        reason = f"exit code {completed.returncode}"
    except subprocess.TimeoutExpired:
        completed, failed, reason = None, True, "timed out"
    if not failed and not (results / f"{name}.json").exists():
        failed, reason = True, f"wrote no {name}.json"
    seconds = time.perf_counter() - start
    if failed:
        if smoke and completed is not None:
            print(completed.stdout[-4000:], completed.stderr[-4000:], sep="\n")
        print(f"FAILED {name}: {reason} ({seconds:.1f} s)", flush=True)
    else:
        print(f"ok {name} ({seconds:.1f} s)", flush=True)
    return not failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)})")
    parser.add_argument("--smoke", action="store_true", help="every benchmark on tiny inputs, into a temporary folder")
    parser.add_argument("--table-only", action="store_true", help="only rewrite the README from the JSON files")
    parser.add_argument("--results", help="folder of the JSON files and README (default: benchmarks/results, "
                        "or a temporary folder with --smoke)")
    args = parser.parse_args()
    names = args.only or (BENCHMARKS if args.smoke else default_benchmarks())
    with tempfile.TemporaryDirectory(prefix="multitaskseg-bench-smoke-") as tmp:
        results = Path(args.results or (tmp if args.smoke else RESULTS))
        results.mkdir(parents=True, exist_ok=True)
        failures = []
        if not args.table_only:
            start = time.perf_counter()
            if args.smoke:
                with ThreadPoolExecutor(max_workers=SMOKE_PARALLEL) as pool:
                    succeeded = list(pool.map(lambda name: run(name, results, True), names))
            else:
                succeeded = [run(name, results, False) for name in names]
            failures = [name for name, ok in zip(names, succeeded) if not ok]
            print(f"benchmarks: {len(names) - len(failures)} of {len(names)} ran, {time.perf_counter() - start:.0f} s")
        try:
            (results / "README.md").write_text(readme(results))
            print(f"ok README ({results / 'README.md'})")
        except Exception as error:  # noqa: BLE001 -- a JSON the README cannot read is a failure to report
            print(f"FAILED README: {type(error).__name__}: {error}")
            failures.append("README")
    if failures:
        print(f"failed: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
