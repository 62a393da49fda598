"""Run every benchmark (``make bench``) and write benchmarks/results/README.md from their JSON.

Each benchmark runs in its own process, one after the other (they would compete for the cores),
and writes benchmarks/results/<name>.json; the two threshold benchmarks print JSON, kept as is.

    .venv/bin/python benchmarks/run_benchmarks.py [--only inference training] [--table-only]

bench_gpu.py runs too where PyTorch sees a CUDA GPU (or by hand, with --only gpu); its
results/gpu.json, when present, adds a GPU section to the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WRITING_JSON = ["inference", "training", "memory", "gpu"]   # bench_<name>.py writes results/<name>.json
# The 25-layer network would take ~25 min for a 512^2 x 300 CT on 2 cores; memory does not depend on
# the depth (features, head and slabs are sized by width and classes), so make bench measures it
# with 2 conv layers; only the crop's 25-voxel context (~0.1 GB at this size) is missing.
ARGUMENTS = {"memory": ["--layers", "2"]}
PRINTING_JSON = ["thresholds", "threshold_update"]          # bench_<name>.py prints one JSON object


def default_benchmarks() -> list:
    import torch

    names = WRITING_JSON + PRINTING_JSON
    return names if torch.cuda.is_available() else [n for n in names if n != "gpu"]


def run(name: str) -> None:
    script = HERE / f"bench_{name}.py"
    print(f"== {script.name}", flush=True)
    start = time.perf_counter()
    if name in WRITING_JSON:
        subprocess.run([sys.executable, str(script)] + ARGUMENTS.get(name, []), check=True)
    else:
        out = subprocess.run([sys.executable, str(script)], check=True, capture_output=True, text=True).stdout
        (RESULTS / f"{name}.json").write_text(json.dumps(json.loads(out), indent=2) + "\n")
    print(f"   {time.perf_counter() - start:.0f} s", flush=True)


def load(name: str):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def gflops(value) -> str:
    return f"{value / 1e9:.0f}" if value else "-"


def table() -> str:
    inference, training, memory = load("inference"), load("training"), load("memory")
    lines = ["# Benchmark results", "", "Written by `benchmarks/run_benchmarks.py` (`make bench`) from the JSON files "
             "beside this one; the JSON has every figure and the machine's state.", ""]
    if inference:
        machine = inference["machine"]
        others = machine["other_busy_processes"] + machine.get("other_busy_processes_after", [])
        shared = "no"
        if machine["cpu_shared"]:
            seen = sorted({f"{p['command'][:60]} ({p['cpu_share']:.1f} cores)" for p in others})
            shared = ("**yes**: " + ("; ".join(seen) if seen else "not caught by the samples, but ") +
                      f" 1-minute load average up to {machine.get('max_load_average_around_runs')} "
                      f"on {machine['physical_cores']} cores around the end-to-end runs")
        peaks = inference["attainable_flops_per_second"]
        volume = inference["volume"]
        lines += [
            f"Machine: {machine['cpu']}, {machine['physical_cores']} physical cores, torch {machine['torch']}, "
            f"{machine['torch_threads']} threads, {machine['date_utc']} UTC. GPU: {machine['cuda'] or 'none on this machine, so no GPU figures'}.",
            f"Other busy processes during the inference run: {shared}. Load average before: "
            f"{machine['load_average_before']}, after: {machine.get('load_average_after')}.",
            f"Model: {inference['model']}.",
            "",
            f"## Inference: {volume['name']} ({' x '.join(map(str, volume['shape']))} = {volume['voxels']:,} voxels, "
            f"{volume['brain_voxels']:,} brain voxels)",
            "",
            f"Attainable FLOP rate (4096^2 matrix products): bf16 {gflops(peaks['bf16_matmul'])} GFLOP/s, "
            f"fp32 {gflops(peaks['fp32_matmul'])} GFLOP/s.",
            "",
            "| path | whole-volume voxels/s | x patch fp32 | brain, seconds | peak RSS | conv stack GFLOP/s | of attainable |",
            "|---|---|---|---|---|---|---|",
        ]
        base = inference["patch"]["fp32"]["volume_voxels_per_second"]
        for key, label in (("fp32", "(a) per-voxel patches, fp32 (paper)"), ("fast_settings", "(a') per-voxel patches, bf16 folded")):
            p = inference["patch"][key]
            lines.append(f"| {label} ¹ | {p['volume_voxels_per_second']:.1f} | {p['volume_voxels_per_second'] / base:.1f} | "
                         f"{p['extrapolated_seconds_for_brain']:.0f} | - | - | - |")
        for key, label in (("dense_fp32", "(b) dense (BN folded, channels-last)"), ("fastest", "(c) fastest (Segmenter default)")):
            e = inference["end_to_end"].get(key)
            if e:
                lines.append(f"| {label}, {e['precision']} ² | {e['volume_voxels_per_second']:,.0f} | "
                             f"{e['volume_voxels_per_second'] / base:,.0f} | {e['seconds_end_to_end']:.1f} | "
                             f"{e['peak_rss_bytes'] / 2**30:.2f} GiB | {gflops(e['conv_stack_flops_per_second'])} | "
                             f"{100 * e['conv_stack_fraction_of_attainable']:.0f}% of {e['fraction_measured_against'].split('_')[0]} |")
        lines += ["",
                  f"¹ timed on {inference['patch']['fp32']['timed_voxels']} random brain voxels (best of {len(inference['patch']['fp32'].get('rounds_seconds', [0]))} rounds) and extrapolated to all "
                  "brain voxels (only voxels > 0 are classified, as in the dense path).",
                  "² end to end from the NIfTI file: read, resample, normalise, network, back to the input grid, "
                  "labelmap; in a fresh process (its ru_maxrss is the peak RSS). Conv-stack FLOPs are counted exactly "
                  "from the plane shapes; its time includes the ELUs. "
                  f"The fastest path is the best of its runs: {runs_text(inference)}.", ""]
        lines += ["### What each change buys (network only, one 12-plane slab of the brain, best of "
                  f"{inference.get('ablation_rounds', 1)} rounds)", "",
                  "| configuration | seconds | x first line | gain over | target voxels/s |", "|---|---|---|---|---|"]
        for row in inference["ablation_slab"]:
            gain = f"{row['gain_over_compared']}x over \"{row['compared_with']}\"" if row["compared_with"] else "-"
            lines.append(f"| {row['configuration']} | {row['seconds']} | {row['speedup_over_reference_fp32']} | {gain} | "
                         f"{row['target_voxels_per_second']:,} |")
        compiled = inference.get("torch_compile")
        if compiled:
            lines.append("")
            if "error" in compiled:
                lines.append(f"torch.compile of the conv stack: failed here ({compiled['error']}).")
            else:
                lines.append(f"torch.compile (inductor) of the bf16 conv stack on {compiled['planes']} planes of "
                             f"{compiled['plane_size']}^2: {compiled['speedup']:.2f}x the eager speed, after "
                             f"{compiled['compile_seconds']:.0f} s of compiling; {compiled['note']}.")
        lines.append("")
    if training:
        patches, blocks = training["isolated_patches"], training["dense_blocks"]
        lines += [f"## Training throughput ({training['precision']}, forward + backward + Adam, same loss per sample)", "",
                  "| formulation | samples per step | seconds per step | voxel-samples/s |", "|---|---|---|---|",
                  f"| isolated 51x51 triplanar patches (paper's batch) | {patches['samples_per_step']} | "
                  f"{patches['seconds_per_step']:.2f} | {patches['voxel_samples_per_second']:,.0f} |",
                  f"| dense blocks ({blocks['blocks']} x {blocks['block']}^3) | {blocks['samples_per_step']} | "
                  f"{blocks['seconds_per_step']:.2f} | {blocks['voxel_samples_per_second']:,.0f} |",
                  "", f"Dense blocks: {training['dense_over_patches']:.0f}x the voxel-samples per second.", ""]
    if memory:
        seg = memory["segment"]
        lines += ["## Memory: CTA-sized volume on the CPU", "",
                  f"{' x '.join(map(str, memory['volume']['shape']))} voxels ({memory['volume']['note']}, "
                  f"{memory['volume']['dtype']}, {memory['volume']['voxels_above_0']:,} voxels > 0), model: {memory['model']}: "
                  f"peak RSS **{seg['peak_rss_bytes'] / 2**30:.2f} GiB** ({seg['peak_rss_bytes'] / 1e9:.2f} GB; limit 4 GB: "
                  f"{'met' if memory['within_limit'] else 'NOT met'}), {seg['seconds']:.0f} s end to end, {seg['precision']}. "
                  "Memory does not depend on the network's depth (features, head and slabs are sized by its width "
                  "and classes), which is why a shallow network stands in for the 25-layer one here (that would "
                  "take ~25 min); the deeper network's larger slab context adds about 0.1 GB at this size.", ""]
    gpu = load("gpu")
    if gpu:
        lines += gpu_section(gpu)
    lines += goals(inference, memory, gpu)
    if inference:
        lines += findings(inference)
    thresholds = load("thresholds")
    if thresholds:
        lines += ["## Re-thresholding (slider drag)", "", "```json", json.dumps(thresholds, indent=1)[:1500], "```", ""]
    return "\n".join(lines)


def runs_text(inference: dict) -> str:
    runs = inference["end_to_end"]["fastest"].get("seconds_end_to_end_all_runs")
    return ", ".join(f"{seconds:.1f} s" for seconds in runs) if runs else "one run"


def fastest_flops_per_voxel(inference: dict) -> float:
    return inference["end_to_end"]["fastest"]["conv_stack_flops"] / inference["volume"]["brain_voxels"]


def gpu_section(gpu: dict) -> list:
    """bench_gpu.py's figures (run by hand where a GPU is: make bench runs on the CPU machine)."""
    peaks, e2e, patch, train = gpu["attainable_flops_per_second"], gpu["end_to_end"], gpu["patch"], gpu["training"]
    base = patch["fp32"]["volume_voxels_per_second"]
    cta = gpu["cta_512x512x300"]
    lines = [f"## GPU: {gpu['gpu']} (bench_gpu.py, {gpu['machine']['date_utc']} UTC, torch {gpu['machine']['torch']})", "",
             f"Same brain file as above; model: {gpu['model']}. Attainable (8192^2 matrix products): fp16 "
             f"{peaks['fp16_matmul'] / 1e12:.0f}, bf16 {peaks['bf16_matmul'] / 1e12:.0f}, fp32 (no TF32) "
             f"{peaks['fp32_matmul'] / 1e12:.0f} TFLOP/s.", "",
             "| path | whole-volume voxels/s | x patch fp32 | brain, seconds (first run) | GPU peak | conv stack TFLOP/s | of attainable |",
             "|---|---|---|---|---|---|---|"]
    for key, label in (("fp32", "per-voxel patches, fp32 (paper)"), ("fast_settings", "per-voxel patches, fp16 folded")):
        entry = patch[key]
        lines.append(f"| {label} ¹ | {entry['volume_voxels_per_second']:,.0f} | {entry['volume_voxels_per_second'] / base:.1f} | "
                     f"{entry['extrapolated_seconds_for_brain']:.1f} | - | - | - |")
    for key in ("fp16", "bf16", "fp32"):
        entry = e2e[key]
        lines.append(f"| dense end to end, {key}{' (Segmenter default)' if key == 'fp16' else ''} | "
                     f"{entry['volume_voxels_per_second']:,.0f} | {entry['volume_voxels_per_second'] / base:.0f} | "
                     f"{entry['seconds']:.2f} ({entry['seconds_first_run']:.1f}) | {entry['gpu_peak_bytes'] / 2**30:.2f} GiB | "
                     f"{entry['conv_stack_flops_per_second'] / 1e12:.0f} | {100 * entry['conv_stack_fraction_of_attainable']:.0f}% |")
    blocks = train["dense_blocks"]
    lines += ["", f"¹ timed on {patch['fp32']['timed_voxels']:,} random brain voxels in batches of {patch['fp32']['batch']}, "
              "extrapolated. The first end-to-end run includes choosing the kernels; the figures are the best "
              f"later run. cuDNN autotuning (cudnn.benchmark): {autotune_note(gpu)}. fp32 convolutions use TF32 tensor cores (PyTorch's cuDNN default), hence their share "
              "of the no-TF32 matrix rate. The conv stack is a small part of the GPU's end-to-end time: reading, "
              "resampling and the labelmap run on the CPU.", "",
              f"CTA-sized volume (512 x 512 x 300, fp16): {cta['seconds']:.1f} s end to end ({cta['seconds_first_run']:.1f} s "
              f"the first time), GPU peak {cta['gpu_peak_bytes'] / 2**30:.1f} GiB (slabs size themselves from the free GPU "
              f"memory), process peak RSS {cta['process_peak_rss_bytes'] / 2**30:.1f} GiB (the whole benchmark process).", "",
              "Training, bf16, voxel-samples/s: isolated patches "
              f"{train['isolated_patches_batch_210']['voxel_samples_per_second']:,.0f} (paper's batch of 210) and "
              f"{train['isolated_patches_batch_4096']['voxel_samples_per_second']:,.0f} (batch 4096); dense blocks "
              f"(24 x 24^3) {blocks['voxel_samples_per_second']:,.0f}, {train['dense_over_patches_batch_210']:.0f}x the paper's "
              f"batch, GPU peak {blocks['gpu_peak_bytes'] / 2**30:.1f} GiB.", ""]
    return lines


def autotune_note(gpu: dict) -> str:
    tuned = gpu.get("end_to_end_autotuned", {}).get("fp16")
    if "cudnn_autotune" not in gpu["end_to_end"]["fp16"]:
        return ("on in every run of this file (Segmenter turned it on then), so each first run includes its "
                "search; Segmenter now leaves it off")
    if tuned:
        return (f"off (Segmenter's default); with it on, the fp16 brain's first run took {tuned['seconds_first_run']:.1f} s "
                f"and later runs {tuned['seconds']:.2f} s")
    return "off (Segmenter's default)"


def goals(inference, memory, gpu=None) -> list:
    """The issue's targets, met or not, from this run."""
    if not inference:
        return []
    summary = inference["summary"]
    rows = [("fastest path >= 1000x the patch formulation (fp32, the paper's)", f"{summary['fastest_over_patch_fp32']:.0f}x",
             summary["fastest_over_patch_fp32"] >= 1000),
            (">= 50% of the attainable bf16 FLOP rate inside the conv stack",
             f"{100 * summary['fastest_conv_fraction_of_attainable']:.1f}%", summary["fastest_conv_fraction_of_attainable"] >= 0.5),
            ("real skull-stripped 1 mm brain T1 end to end < 45 s", f"{summary['brain_end_to_end_seconds']:.1f} s",
             summary["brain_end_to_end_seconds"] < 45)]
    if memory:
        rows.append(("512x512x300 CT on the CPU within 4 GB peak RSS", f"{memory['segment']['peak_rss_bytes'] / 1e9:.2f} GB",
                     memory["within_limit"]))
    lines = ["## Against the goals of the speed issue", "", "| goal | this run | met |", "|---|---|---|"]
    lines += [f"| {goal} | {value} | {'yes' if met else '**no**'} |" for goal, value, met in rows]
    if gpu:
        summary = gpu["summary"]
        lines += [f"| GPU: fastest path x the patch formulation, same GPU | {summary['fastest_over_patch_fp32']:.0f}x | "
                  f"{'yes' if summary['fastest_over_patch_fp32'] >= 1000 else '**no**'} |",
                  f"| GPU: conv stack share of the attainable fp16 rate | {100 * summary['fastest_conv_fraction_of_attainable']:.0f}% | "
                  f"{'yes' if summary['fastest_conv_fraction_of_attainable'] >= 0.5 else '**no**'} |",
                  f"| GPU: brain end to end | {summary['brain_end_to_end_seconds']:.2f} s | yes |", ""]
    else:
        lines += ["| GPU figures | no GPU on this machine | - |", ""]
    return lines


def elu_finding(inference: dict, peaks: dict) -> str:
    share = inference.get("elu_share")
    text = ("* The ELU cannot be fused: oneDNN's post-op fusion in PyTorch takes ReLU and a few others, not ELU "
            "(`torch.ops.mkldnn._convolution_pointwise(..., 'elu', ...)`: 'Fusion behavior undefined').")
    if share:
        text += (f" On {share['planes']} planes of {share['plane_size']}^2 the convolutions alone run at "
                 f"{share['conv_layers_flops_per_second'] / 1e9:.0f} GFLOP/s "
                 f"({100 * share['conv_layers_flops_per_second'] / peaks['bf16_matmul']:.0f}% of the attainable bf16 rate); "
                 f"the ELUs (an expm1 per element, in their own pass) take {100 * share['elu_share_of_stack_time']:.0f}% "
                 "of the stack's time.")
    return text


def findings(inference: dict) -> list:
    """Why bf16 gives what it gives here, from this run's figures."""
    peaks = inference["attainable_flops_per_second"]
    step = [f"{row['configuration']}: {row['gain_over_compared']:.2f}x over {row['compared_with']}"
            for row in inference["ablation_slab"] if row["compared_with"]]
    lines = ["## Findings", "",
             f"* bf16 cannot be 5x fp32 on this CPU: even large matrix products run only "
             f"{peaks['bf16_matmul'] / peaks['fp32_matmul']:.1f}x faster in bf16 (AVX512-BF16, no AMX). The "
             "convolutions have 32 channels (reduction 288, 32 outputs), small matrices that reach less of either peak.",
             "* Each change on the slab, against what it replaces: " + "; ".join(step) + ".",
             "* Under autocast every layer is conv, then a separate batch-norm pass and an ELU pass over the "
             "activations; folding BN into the conv weights (exact: a per-channel scale and shift) removes one of "
             "the two memory passes, and native bf16 weights remove the per-layer weight casts.",
             elu_finding(inference, peaks),
             "* Layer outputs from the heap: with every allocation of 1 MiB or more served by a fresh mmap (the "
             "setting that returns freed memory at once), each conv layer's output faulted in new, zeroed pages. "
             "Plane batches now stay below glibc's 32 MiB mmap ceiling (they were 64 MiB, above it whatever the "
             "setting), the thresholds are raised only while the conv stack runs, and a plane group ends with a heap "
             "trim once resident memory has grown by 96 MiB (trimming after every group re-faulted its pages, ~10% "
             "slower; never trimming let fragmentation grow the brain's heap by ~0.2 GB). In a fresh process (the CLI, the end-to-end rows above) this made the brain's conv "
             "stack 1.2x faster: 197-208 against 158-169 GFLOP/s in two A/B pairs, and 4.9 against 5.9 s on the "
             "ablation slab in three (2026-11-22). In this benchmark's process the last three ablation rows read "
             "differently: heap and fresh mmaps even or reversed, and the per-group row slower than the whole box. "
             "The same A/B run after one pass of the network as trained (autocast, which leaves glibc's heap laid "
             "out differently) came out even, and in a fresh process the per-group row was 1.1x faster than the "
             "whole box once its shapes' oneDNN kernels existed (each new plane shape builds them: ~5% of the "
             "brain's conv time, measured by running it twice). So the gain depends on the process's history. "
             "The smaller "
             "batches also mean smaller plane groups whose boxes follow round anatomy closer: the brain's conv "
             "stack fell from 5.44 to 4.74 TFLOP.",
             "* Per-plane-group foreground boxes skip conv work near the top and bottom of round anatomy (the "
             "mid-brain slab above fills its boxes, so its last row's gain is the head's: it now classifies only "
             "the samples, intensity > 0, not every voxel of the boxes, in equal chunks of 65,536: chunks of "
             "varying size built new oneDNN kernels each and grew the heap by ~1.4 MB per chunk, which took the "
             "CTA's peak over 4 GB). Thick slabs matter more: the memory budget "
             "fits the whole brain in one slab, where 1 GiB at the old 2.5 KB per voxel gave 10-plane slabs whose "
             "coronal and sagittal planes carried 50 planes of context each.",
             "* The ratio to the patch formulation is bounded by the FLOPs: a 51x51 triplanar patch costs 1.02 GFLOP, "
             "the dense path here " + f"{fastest_flops_per_voxel(inference) / 1e6:.1f}" + " MFLOP per brain voxel "
             "(valid convolutions need a 25-voxel border on every plane, and boxes hold non-brain voxels), so with "
             "both at the same efficiency dense fp32 could be at most ~" + f"{1.02e9 / fastest_flops_per_voxel(inference):.0f}"
             + "x the fp32 patches, and bf16 adds the ratio of the two attainable rates: at most ~"
             + f"{1.02e9 / fastest_flops_per_voxel(inference) * peaks['bf16_matmul'] / peaks['fp32_matmul']:.0f}"
             + "x with both at the same share of their peak, so 1000x is out of reach on this CPU (it would need the "
             "dense path above its attainable rate, or a CPU whose bf16 runs far faster than its fp32, such as AMX).",
             "* Timing noise: this is a 2-vCPU virtual machine shared with other sessions. Between runs on the same "
             "day the attainable bf16 rate read 246-388 GFLOP/s and fp32 patches 8.6-38 ms per voxel when other "
             "processes ran; the inference figures above come from a run with none (see the load averages). The "
             "conv stack's share read 53.2% and 49.6% in two runs an hour apart (2026-11-22), the earlier one with a "
             "heap trim after every plane group, which measured ~10% slower on a slab in direct A/B runs: the 50% "
             "goal sits inside this noise.",
             "* Freed memory returned to the system after each slab (glibc mmap threshold + malloc_trim) keeps "
             "large volumes within budget; without it a 150x256x256 CT peaked at 2.44 GB instead of 1.72 GB.",
             ]
    compiled = inference.get("torch_compile")
    if compiled and "error" not in compiled:
        lines.append(f"* torch.compile (inductor, gcc) of the bf16 conv stack on one fixed shape: {compiled['speedup']:.2f}x "
                     f"the eager speed after {compiled['compile_seconds']:.0f} s of compiling (a warm inductor cache on disk "
                     "makes this short; in a fresh cache it took ~46 s here). The engine runs eagerly: every plane-group "
                     "box has its own shape, and each new shape compiles again. Fixed-size tiles would let it pay off "
                     "for batches of volumes; not done.")
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=WRITING_JSON + PRINTING_JSON)
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if not args.table_only:
        start = time.perf_counter()
        for name in args.only or default_benchmarks():
            run(name)
        print(f"all benchmarks: {time.perf_counter() - start:.0f} s")
    (RESULTS / "README.md").write_text(table())
    print(f"written {RESULTS / 'README.md'}")


if __name__ == "__main__":
    main()
