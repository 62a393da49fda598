"""``multitaskseg info``: what a model bundle holds, read from its metadata (no weights loaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..engine.errors import InputError
from .console import EXIT_OK, PROG


def _add_info(subparsers) -> None:
    parser = subparsers.add_parser("info", help="show what a model bundle contains",
                                   description="Show a model bundle's metadata (no weights are loaded).")
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="a .safetensors model bundle (default: the shipped model or $MULTITASKSEG_MODEL)")
    parser.add_argument("--json", action="store_true", help="print the metadata as JSON")
    parser.set_defaults(run=_run_info)


def _run_info(args) -> int:
    from ..engine.bundle import MODEL_ENV_VAR, default_model_path, read_metadata
    from ..engine.bundle_schema import parameter_count_of, validate_architecture

    path = Path(args.model) if args.model else default_model_path()
    if args.model is None and not path.exists():
        raise InputError(f"No model given and the default model {path} is not there: give a model file "
                         f"('{PROG} info MODEL'), set ${MODEL_ENV_VAR}, or create the default one with 'make demo'.")
    metadata = read_metadata(path)  # checked against the schema
    # Counted from the architecture, not built: a damaged file announcing a huge network must not hang info.
    parameters = parameter_count_of(validate_architecture(metadata["architecture"], str(path)))
    if args.json:
        print(json.dumps({"path": str(path), "parameter_count": parameters, **metadata}, indent=2))
    else:
        print(describe_metadata(metadata, path, parameters))
    return EXIT_OK


def describe_metadata(metadata: Mapping[str, Any], path: Path, parameters: int) -> str:
    """The bundle metadata as aligned, readable text."""
    arch = metadata["architecture"]
    thresholds = metadata.get("thresholds") or {}
    spacing = metadata.get("target_spacing_mm")
    lines = [
        f"Model:          {path}",
        f"Architecture:   {arch.get('name', 'triplanar-cnn')}: {arch['n_layers']} shared 3x3 convolutions x "
        f"{arch['n_filters']} kernels on three {arch.get('patch_size', 2 * arch['n_layers'] + 1)}-pixel "
        f"planes, head {3 * arch['n_filters']}->{arch['n_hidden']}->{arch['n_hidden']}->{arch['num_classes']}, "
        f"dropout {arch['dropout']}",
        f"Parameters:     {parameters:,}",
        f"Target spacing: {f'{spacing:g} mm isotropic' if spacing else 'the median spacing of each input'}",
        "",
        "Tasks:",
    ]
    for task in metadata["tasks"]:
        lines.append(f"  {task['name']:<10} {task['modality']:<3} {task.get('description', '')}")
        lines.append(f"  {'':<10}     classes: {', '.join(task['classes'])}")
    lines += ["", "Classes:", f"  {'#':>2}  {'name':<32} {'colour':<8} {'task':<9} {'decision':<16} terminology"]
    for c in metadata["classes"]:
        decision = c["decision"] or "-"
        if c["name"] in thresholds:
            decision = f"{decision} {thresholds[c['name']]:g}"
        lines.append(f"  {c['index']:>2}  {c['name']:<32} {_hex_colour(c['color']):<8} {c['task'] or '-':<9} "
                     f"{decision:<16} {_terminology_text(c.get('terminology') or {})}")
    lines += ["", "Intensity normalisation:"]
    for modality, rule in metadata["normalization"].items():
        lines.append(f"  {modality:<3} " + ", ".join(f"{key}={value}" for key, value in rule.items()))
    provenance = metadata.get("provenance") or {}
    if provenance:
        lines += ["", "Provenance:"]
        lines += [f"  {key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}"
                  for key, value in provenance.items()]
    return "\n".join(lines)


def _hex_colour(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(float(c) * 255):02x}" for c in rgb)


def _terminology_text(terminology: Mapping[str, Sequence[str]]) -> str:
    """"SCT 68523003 Cerebral White Matter (Right and left)" from the bundle's code triplets."""
    if "type" not in terminology:
        return "-"
    scheme, code, meaning = terminology["type"]
    text = f"{scheme} {code} {meaning}"
    if terminology.get("modifier"):
        text += f" ({terminology['modifier'][2]})"
    return text


SUBCOMMANDS = (_add_info,)
