"""benchmarks/results/README.md, written from the JSON files beside it: every figure, the machine
and the load come from the runs themselves (nothing here is written for one machine or one date).

    .venv/bin/python benchmarks/results_readme.py [--results DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional

from common import RESULTS

# The speed issue's targets (issue 15): (what, JSON getter, limit, unit)
CPU_TARGETS = [
    ("CPU: the brain end to end in-process", lambda r: r["inference"]["summary"]["brain_end_to_end_seconds"], 20, "s"),
    ("CPU: the whole `multitaskseg segment` command on the brain",
     lambda r: r["inference"]["summary"]["whole_command_seconds"], 25, "s"),
    ("CPU: CTA-sized (512 x 512 x 300) peak memory", lambda r: r["memory"]["segment"]["peak_rss_bytes"] / 1e9, 2, "GB"),
]
GPU_TARGETS = [
    ("GPU: CTA-sized volume in-process", lambda r: r["gpu"]["summary"]["cta_seconds"], 2, "s"),
    ("GPU: the brain in-process", lambda r: r["gpu"]["summary"]["brain_end_to_end_seconds"], 0.3, "s"),
    ("GPU: the whole `multitaskseg segment` command on the brain",
     lambda r: r["gpu"]["summary"]["whole_command_seconds"], 4, "s"),
]


def load(folder: Path, name: str) -> Optional[dict]:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def gib(n) -> str:
    return f"{n / 2**30:.2f} GiB" if n else "-"


def rate(n) -> str:
    return f"{n / 1e12:.1f} TFLOP/s" if n >= 1e12 else f"{n / 1e9:.0f} GFLOP/s"


def times_bound(bound: Optional[dict]) -> str:
    return f"{bound['times_flop_bound']:.2f}x" if bound and bound.get("times_flop_bound") else "-"


def machine_lines(machine: dict) -> List[str]:
    """The machine a run measured, and how busy it was, from the run's own record."""
    flags = ", ".join(machine.get("matrix_flags", [])) or "none of AVX2/AVX-512/AMX"
    lines = [f"- CPU: {machine['cpu']} ({flags}); {machine['physical_cores']} physical cores, "
             f"{machine['logical_cpus']} logical CPUs; torch {machine['torch']} with {machine['torch_threads']} "
             f"threads; Python {machine['python']}; GPU: {machine.get('gpu') or machine.get('cuda') or 'none'}.",
             f"- Started {machine['date_utc']} UTC. Load average (1, 5, 15 min) at the start "
             f"{machine.get('load_average_start', machine.get('load_average_before'))}, at the end "
             f"{machine.get('load_average_end', machine.get('load_average_after', '-'))}."]
    others = machine.get("other_busy_processes_start", []) + machine.get("other_busy_processes_end", [])
    if machine.get("cpu_shared"):
        seen = sorted({f"`{p['command'][:50]}` ({p['cpu_share']:.1f} cores)" for p in others})
        lines.append("- **The cores were shared** with other work during this run"
                     + (f" ({'; '.join(seen[:6])})" if seen else " (load average above the core count)")
                     + ": absolute times are noisy and high; the ratios measured within the run (times the "
                       "FLOP bound, speed-ups between rows) are the figures to compare.")
    else:
        lines.append("- Nothing else was seen using the cores at the start or the end of the run.")
    return lines


def measured(result: dict, reference: Optional[dict]) -> str:
    """A section's own run: its load, and its date and machine when not the inference run's."""
    machine = result.get("machine")
    if not isinstance(machine, dict):
        return "_(measured by an older version of the benchmark; no machine record)_\n\n"
    load = (f"load average at the start {machine.get('load_average_start', '?')}, at the end "
            f"{machine.get('load_average_end', '?')}")
    same = reference and machine.get("cpu") == reference.get("cpu") and \
        machine.get("date_utc", "")[:10] == reference.get("date_utc", "")[:10]
    where = "" if same else f" on {machine.get('cpu', '?')}"
    return f"_(measured {machine.get('date_utc', '?')} UTC{where}; {load})_\n\n"


def inference_section(inference: dict) -> List[str]:
    rates, volume, e2e = inference["attainable_flops_per_second"], inference["volume"], inference["end_to_end"]
    patch = inference["patch"]
    base = patch["fp32"]["extrapolated_seconds"]
    lines = ["## Inference: the brain", "",
             f"{volume['name']}, {' x '.join(map(str, volume['shape']))} = {volume['voxels']:,} voxels, "
             f"{volume['brain_voxels']:,} brain voxels; model: {inference['model']}; Segmenter's CPU precision: "
             f"{inference['precision']}.", "",
             f"Attainable rates measured in this run (best of the start and the end): matrix products "
             f"({rates['matmul_size']}^2) bf16 {rate(rates['bf16_matmul'])}, fp32 {rate(rates['fp32_matmul'])}; "
             f"one of the network's conv layers alone bf16 {rate(rates['bf16_conv_layer'])}, fp32 "
             f"{rate(rates['fp32_conv_layer'])}. **A path's FLOP bound** is its conv FLOPs (counted exactly from "
             "the plane shapes) at the matrix rate of its precision; \"x bound\" is its time over that bound "
             "(1.0 would be the conv stack at the attainable rate, nothing else costing time).", "",
             "| path | seconds | x bound | conv stack share of attainable | voxels/s | x patch fp32 | peak RSS |",
             "|---|---|---|---|---|---|---|"]
    for key, label in (("fp32", "per-voxel patches, fp32 (paper) ¹"), ("fast", "per-voxel patches, prepared ¹")):
        p = patch[key]
        label = label if key == "fp32" else f"per-voxel patches, prepared {p['precision']} ¹"
        lines.append(f"| {label} | {p['extrapolated_seconds']:,.0f} | {times_bound(p['flop_bound'])} | - | "
                     f"{p['volume_voxels_per_second']:,.0f} | {base / p['extrapolated_seconds']:.1f} | - |")
    rows = [("segmenter", "`Segmenter.predict`, in-process ²"), ("stages", "the same, stage by stage ³"),
            ("stages_fp32", "stage by stage, dense fp32 ³")]
    for key, label in rows:
        e = e2e.get(key)
        if not e:
            continue
        share = (f"{100 / e['conv_stack_flop_bound']['times_flop_bound']:.0f}%"
                 if "conv_stack_flop_bound" in e else "-")
        runs = ", ".join(f"{s:.1f}" for s in e["seconds_all_runs"])
        lines.append(f"| {label}, {e['precision']} | {e['seconds_end_to_end']:.1f} ({runs}) | "
                     f"{times_bound(e['flop_bound'])} | {share} | {e['volume_voxels_per_second']:,.0f} | "
                     f"{base / e['seconds_end_to_end']:,.0f} | {gib(e['peak_rss_bytes'])} |")
    command = inference["whole_command"]
    lines.append(f"| the whole `multitaskseg segment` command ⁴ | {command['seconds']:.1f} (first "
                 f"{command['seconds_first']:.1f}) | {times_bound(command['flop_bound'])} | - | "
                 f"{volume['voxels'] / command['seconds']:,.0f} | {base / command['seconds']:,.0f} | "
                 f"{gib(command['peak_rss_bytes'])} |")
    stages = e2e["stages"]
    lines += ["", f"¹ timed on {patch['fp32']['timed_voxels']} random brain voxels and extrapolated to all brain voxels "
              f"(the dense path classifies only voxels > 0 too); its bound counts its own FLOPs "
              f"({patch['fp32']['conv_flops_per_voxel'] / 1e9:.3g} GFLOP per voxel).",
              "² from the NIfTI file to the labelmap, each run in a fresh process (its peak RSS is the process's); "
              "the best run first, every run in brackets.",
              "³ inference_worker.py calls the engine's public functions one by one as `Segmenter.predict` does, "
              "on a model it prepared, with the conv stack timed per call (synchronised).",
              "⁴ a fresh process as users run it: Python and torch imports, model load, gzip NIfTI read, "
              "segmentation, NIfTI write.", "",
              agreement_line(inference), "",
              "Where the stage-by-stage run spent its time (seconds):", "",
              "| " + " | ".join(stages["stage_seconds"]) + " | of the network: conv stack |",
              "|" + "---|" * (len(stages["stage_seconds"]) + 1),
              "| " + " | ".join(f"{s:.2f}" for s in stages["stage_seconds"].values())
              + f" | {stages['seconds_conv_stack']:.2f} |", ""]
    return lines + ablation_lines(inference) + conv_stack_lines(inference)


def agreement_line(inference: dict) -> str:
    entries = inference.get("labels_against_the_first_segmenter_run", {})
    parts = [f"{name} {100 * e['equal_fraction']:.3f}% ({e['differing_voxels']:,} voxels differ)"
             for name, e in entries.items()]
    return ("Labelmaps against the first `Segmenter.predict` run's, voxels equal: " + "; ".join(parts) + "."
            if parts else "")


def ablation_lines(inference: dict) -> List[str]:
    slab = inference["ablation_slab"]
    z0, z1 = slab["planes"]
    lines = [f"### What each change buys (network only: axial planes {z0}-{z1 - 1} with their context, best of "
             f"{inference['ablation_rounds']} rounds)", "",
             "| configuration | seconds | x first row | gain over the row it replaces | x bound |", "|---|---|---|---|---|"]
    for row in slab["rows"]:
        gain = f"{row['gain_over_compared']:.2f}x over \"{row['compared_with']}\"" if row["compared_with"] else "-"
        lines.append(f"| {row['configuration']} | {row['seconds']:.2f} | {row['speedup_over_first']:.2f} | {gain} | "
                     f"{times_bound(row['flop_bound'])} |")
    return lines + [""]


def conv_stack_lines(inference: dict) -> List[str]:
    conv = inference["conv_stack"]
    flops = conv["flops_per_second"]
    lines = [f"### The conv stack on one batch of {conv['planes']} planes of {conv['plane_size']}^2 ({conv['precision']})",
             "", f"- As the engine runs it (layer outputs reuse the heap): {rate(flops['engine'])}, "
             f"{100 / conv['engine_flop_bound']['times_flop_bound']:.0f}% of the attainable {conv['precision']} rate.",
             f"- Without its ELUs: {rate(flops['without_elu'])} "
             f"({100 / conv['convolutions_alone_flop_bound']['times_flop_bound']:.0f}%): the ELUs take "
             f"{100 * conv['elu_share_of_stack_time']:.0f}% of the stack's time (PyTorch cannot fuse ELU into "
             "oneDNN's convolutions, so each is a separate pass over the activations).",
             f"- Every layer output in a fresh mmap (glibc's setting outside the conv stack): {rate(flops['fresh_mmaps'])}; "
             f"the heap setting is {conv['heap_over_fresh_mmaps']:.2f}x that."]
    compiled = inference.get("torch_compile")
    if compiled and "error" in compiled:
        lines.append(f"- torch.compile: failed here ({compiled['error']}).")
    elif compiled:
        lines.append(f"- torch.compile (inductor) of the same stack on {compiled['planes']} planes of "
                     f"{compiled['plane_size']}^2: {compiled['speedup']:.2f}x the eager speed after "
                     f"{compiled['compile_seconds']:.0f} s of compiling; {compiled['note']}.")
    return lines + [""]


def memory_section(memory: dict, reference) -> List[str]:
    seg, volume = memory["segment"], memory["volume"]
    target = memory.get("target_bytes", 2e9)
    lines = ["## Memory: CTA-sized volume on the CPU", "", measured(memory, reference) +
             f"{' x '.join(map(str, volume['shape']))} voxels ({volume['note']}, {volume['dtype']}, "
             f"{volume['voxels_above_0']:,} voxels > 0), model: {memory['model']}: peak RSS **{gib(seg['peak_rss_bytes'])}** "
             f"({seg['peak_rss_bytes'] / 1e9:.2f} GB; target {target / 1e9:.0f} GB: "
             f"{'met' if seg['peak_rss_bytes'] <= target else 'not met'}), {seg['seconds']:.0f} s end to end at "
             f"{seg['precision']}{' with the ' + seg['backend'] + ' conv stack' if 'backend' in seg else ''}. "
             "Stages started at (s): "
             + ", ".join(f"{k} {v}" for k, v in seg["stage_started_at_seconds"].items()) + ". Memory does not depend "
             "on the network's depth, so a shallow network stands in for the 25-layer one (bench_memory.py).", ""]
    runs = [("target run", seg)] + [(f"{v['segment'].get('backend', v['backend'])} conv stack, "
                                     f"{v['slice_mm']} mm slices", v["segment"]) for v in memory.get("variants", [])]
    if "stage_peak_rss_bytes" in seg:  # resident memory sampled every 50 ms, stages by the progress callback
        stages = list(dict.fromkeys(k for _, run in runs for k in run.get("stage_peak_rss_bytes", {})))
        lines += ["| peak RSS (GB) by stage | " + " | ".join(name for name, _ in runs) + " |",
                  "|---|" + "---:|" * len(runs)]
        lines += [f"| {stage} | " + " | ".join(f"{run['stage_peak_rss_bytes'][stage] / 1e9:.2f}"
                                               if stage in run.get("stage_peak_rss_bytes", {}) else "-"
                                               for _, run in runs) + " |" for stage in stages]
        lines += ["| **whole process (VmHWM)** | " + " | ".join(f"**{run['peak_rss_bytes'] / 1e9:.2f}**"
                                                               for _, run in runs) + " |",
                  "| seconds | " + " | ".join(f"{run['seconds']:.0f}" for _, run in runs) + " |", "",
                  "A stage's peak: resident memory sampled every 50 ms while the progress callback last named "
                  "that stage; the whole process's peak also catches shorter spikes. The 0.625 mm slices have an "
                  "interpolated canonical grid of 39% more voxels (float32 input and uint8 probabilities there).", ""]
    return lines


def training_section(training: dict, reference) -> List[str]:
    cpu = training["cpu"]
    patches = next(v for k, v in cpu.items() if k.startswith("isolated_patches"))
    blocks = cpu["dense_blocks"]
    return [f"## Training throughput ({cpu['precision']}, forward + backward + Adam, same loss per sample)", "",
            measured(training, reference) + "| formulation | samples per step | seconds per step | voxel-samples/s |",
            "|---|---|---|---|",
            f"| isolated 51x51 triplanar patches (paper's batch) | {patches['samples_per_step']} | "
            f"{patches['seconds_per_step']:.2f} | {patches['voxel_samples_per_second']:,.0f} |",
            f"| dense blocks ({blocks['blocks']} x {blocks['block']}^3) | {blocks['samples_per_step']} | "
            f"{blocks['seconds_per_step']:.2f} | {blocks['voxel_samples_per_second']:,.0f} |",
            "", f"Dense blocks: {cpu['dense_over_patches']:.0f}x the voxel-samples per second.", ""]


def threshold_sections(thresholds, update, reference) -> List[str]:
    lines = []
    if thresholds:
        lines += ["## Re-thresholding (slider drag) on a large probability map", "", measured(thresholds, reference) +
                  f"{thresholds['classes']} classes on {' x '.join(map(str, thresholds['shape_zyx']))} voxels "
                  f"({thresholds['probability_map_mb']} MB of uint8): first labelmap {thresholds['first_labelmap_s']} s "
                  f"(includes the cached argmax), each threshold change {thresholds['threshold_change_s_median']} s "
                  f"(median of {thresholds['repeats']}).", ""]
    if update:
        lines += ["## Threshold change in Slicer's MRML classes", "", measured(update, reference) +
                  f"{' x '.join(map(str, update['shape_zyx']))} voxels, {update['segments']} segments: "
                  f"{update['update_median_s']} s per change (median of {update['repeats']}), of which the labelmap "
                  f"rule {update['of_which_labelmap_rule_median_s']} s.", ""]
    return lines


def gpu_section(gpu: dict) -> List[str]:
    machine = gpu["machine"]
    head = [f"## GPU: {gpu['gpu'] or 'none: a smoke run of bench_gpu.py on the ' + gpu.get('device', 'cpu')}", "", f"_(bench_gpu.py, {machine['date_utc']} UTC, torch {machine['torch']}, "
            f"{machine['cpu']} host)_", ""]
    summary = gpu["summary"]
    if "precision" not in summary:  # written by the benchmark before it measured FLOP bounds
        return head + ["Measured by an older version of bench_gpu.py on an older engine, not re-measured since: "
                       f"the brain end to end {summary['brain_end_to_end_seconds']:.2f} s warm, CTA-sized volume "
                       f"{summary['cta_seconds']:.1f} s with {summary['cta_gpu_peak_gib']:.1f} GiB GPU peak, conv "
                       f"stack at {100 * summary['fastest_conv_fraction_of_attainable']:.0f}% of the attainable fp16 "
                       "rate. gpu.json has every figure.", ""]
    rates = gpu["attainable_flops_per_second"]
    lines = head + ["Attainable: " + ", ".join(f"{k.split('_')[0]} {rate(v)}" for k, v in rates.items()
                                               if k.endswith("_matmul")) + f" ({rates['matmul_size']}^2 products).", "",
                    "| path | seconds warm (first) | x bound | conv stack share | GPU peak |", "|---|---|---|---|---|"]
    for key, e in list(gpu["end_to_end"].items()) + [(f"{k}, cuDNN autotuned", e)
                                                      for k, e in gpu["end_to_end_autotuned"].items()]:
        lines.append(f"| brain, `Segmenter.predict`, {key} | {e['seconds']:.2f} ({e['seconds_first_run']:.2f}) | "
                     f"{times_bound(e['flop_bound'])} | {100 / e['conv_stack_flop_bound']['times_flop_bound']:.0f}% | "
                     f"{gib(e['gpu_peak_bytes'])} |")
    cta = gpu["cta"]
    lines.append(f"| CTA-sized {' x '.join(map(str, cta['shape']))}, {cta['precision']} | {cta['seconds']:.2f} "
                 f"({cta['seconds_first_run']:.2f}) | {times_bound(cta['flop_bound'])} | "
                 f"{100 / cta['conv_stack_flop_bound']['times_flop_bound']:.0f}% | {gib(cta['gpu_peak_bytes'])} |")
    command = gpu.get("whole_command")
    if command:
        lines.append(f"| the whole `multitaskseg segment` command, brain | {command['seconds']:.2f} "
                     f"({command['seconds_first']:.2f}) | {times_bound(command['flop_bound'])} | - | - |")
    for key, p in gpu["patch"].items():
        lines.append(f"| per-voxel patches, {p['precision']} (extrapolated) | {p['extrapolated_seconds']:.1f} | "
                     f"{times_bound(p['flop_bound'])} | - | - |")
    training = gpu["training"]
    lines += ["", f"Training ({training['precision']}): dense blocks {training['dense_over_patches']:.0f}x the "
              "voxel-samples per second of isolated patches at the paper's batch.", ""]
    return lines


def targets_section(results: dict) -> List[str]:
    lines = ["## The speed issue's targets", "", "| target | measured | met |", "|---|---|---|"]
    has_gpu = bool(results.get("gpu") and results["gpu"].get("gpu"))
    for what, get, limit, unit in CPU_TARGETS + (GPU_TARGETS if has_gpu else []):
        try:
            value = get(results)
        except (KeyError, TypeError):
            value = None
        if value is None:
            lines.append(f"| {what} <= {limit} {unit} | not measured | - |")
        else:
            lines.append(f"| {what} <= {limit} {unit} | {value:.2f} {unit} | {'yes' if value <= limit else '**no**'} |")
    if not has_gpu:
        lines.append("| GPU targets | no GPU figures | - |")
    return lines + [""]


def other_section(name: str, result: dict, reference) -> List[str]:
    """A benchmark this writer has no table for: its summary's figures, as they are."""
    summary = next((value for key, value in result.items() if key.startswith("summary") and isinstance(value, dict)),
                   None)
    when = measured(result, reference).strip()
    lines = [f"## {name.replace('_', ' ').capitalize()} (bench_{name}.py)", ""] + ([when, ""] if when else [])
    if summary:
        lines += [f"- {key}: {round(value, 4) if isinstance(value, float) else value}" for key, value in summary.items()]
    else:
        lines.append(f"Figures in {name}.json (this README shows a benchmark's top-level \"summary\" object; "
                     "results_readme.py has no table for this one).")
    return lines + [""]


KNOWN = ("inference", "memory", "training", "thresholds", "threshold_update", "gpu")


def readme(folder: Path = RESULTS) -> str:
    names = KNOWN + tuple(sorted(p.stem for p in folder.glob("*.json") if p.stem not in KNOWN))
    results = {name: load(folder, name) for name in names}
    inference = results["inference"]
    reference = (inference or next((r for r in results.values() if r and "machine" in r), None) or {}).get("machine")
    lines = ["# Benchmark results", "",
             "Written by `benchmarks/run_benchmarks.py` (`make bench`) from the JSON files beside this one, which "
             "hold every figure. The machine below is the one the inference run measured; a section measured at "
             "another time or place says so.", ""]
    if reference:
        lines += ["## Machine", ""] + machine_lines(reference) + [""]
    if results["gpu"] and results["gpu"]["summary"].get("precision") is None:
        results_for_targets = dict(results, gpu=None)  # an older gpu.json has no comparable figures
    else:
        results_for_targets = results
    lines += targets_section(results_for_targets)
    if inference:
        lines += inference_section(inference)
    if results["memory"]:
        lines += memory_section(results["memory"], reference)
    if results["training"] and "cpu" in results["training"]:
        lines += training_section(results["training"], reference)
    lines += threshold_sections(results["thresholds"], results["threshold_update"], reference)
    if results["gpu"]:
        lines += gpu_section(results["gpu"])
    for name in names[len(KNOWN):]:
        lines += other_section(name, results[name], reference)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    folder = Path(parser.parse_args().results)
    (folder / "README.md").write_text(readme(folder))
    print(f"written {folder / 'README.md'}")


if __name__ == "__main__":
    main()
