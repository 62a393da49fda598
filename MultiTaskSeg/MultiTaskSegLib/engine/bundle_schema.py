"""The schema of a model bundle's metadata: types and ranges, checked before anything is built.

A model file comes from elsewhere. Its metadata must not be able to crash the loader (wrong
types, missing fields, 100,000-deep JSON), hang it (a network of a million layers, built just to
count its parameters) or make the tool misbehave later (a class named "../x" becoming a file
name, a default threshold on an argmax class, a normalisation rule that divides by zero). Every
violation is a ModelError saying which field and what it must be.

The names of normalisation methods live in normalization.py; a rule is checked generically: its
fields must be JSON scalars (numbers finite), and applying it to a small probe image must give
finite values.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, Dict, List, Mapping

import numpy as np

from .classes import ClassInfo, TaskInfo, validate_class_set
from .errors import InputError, ModelError
from .network import Architecture
from .normalization import normalize

MAX_CLASSES = 255  # label values are uint8, 0 for background
MAX_JSON_DEPTH = 32  # the real metadata nests 4 deep
MAX_METADATA_CHARS = 4 * 2 ** 20  # the real metadata is ~5 kB
# Ranges of the architecture: far beyond the paper's (25 layers, 32 filters, 192 hidden nodes,
# ~270k parameters), short of a network that would exhaust memory just to be built.
ARCHITECTURE_RANGES = {"num_classes": (2, MAX_CLASSES), "n_layers": (1, 100), "n_filters": (1, 512),
                       "n_hidden": (1, 4096)}
MAX_PARAMETERS = 50_000_000
TARGET_SPACING_RANGE_MM = (0.01, 100.0)

_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _probe_image() -> np.ndarray:
    """A small head-like image for trying normalisation rules: a ball of tissue whose intensity
    rises towards a bright core (a few modes for MR rules, HU-like values for CT windows) in air."""
    z, y, x = np.mgrid[-8:8, -8:8, -8:8].astype(np.float32) + 0.5
    radius = np.sqrt(x * x + y * y + z * z)
    image = np.where(radius < 7, 100.0 + 100.0 * np.round(7 - radius), 0.0).astype(np.float32)
    return image


_PROBE = _probe_image()


def check_json_depth(text: str, where: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit`` before parsing it (the parser would recurse)."""
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                raise ModelError(f"{where}: the metadata is nested more than {limit} levels deep; it is not a "
                                 f"MultiTaskSeg bundle's metadata (corrupt or hostile file).")
        elif token in "]}":
            depth -= 1


def _fail(where: str, field: str, expected: str, value: Any) -> ModelError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ModelError(f"{where}: the metadata field {field} must be {expected}, got {shown}. The model file "
                      f"is damaged or was not written by MultiTaskSeg.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _object(metadata: Mapping, key: str, where: str) -> Mapping:
    value = metadata.get(key)
    if not isinstance(value, Mapping):
        raise _fail(where, key, "a JSON object", value)
    return value


def _list(metadata: Mapping, key: str, where: str) -> List:
    value = metadata.get(key)
    if not isinstance(value, list) or not value:
        raise _fail(where, key, "a non-empty list", value)
    return value


def parameter_count_of(architecture: Architecture) -> int:
    """The network's trainable parameters, computed, not built (``network.parameter_count`` of the
    built network gives the same number): conv stack, batch norms, head."""
    f, h, c, n = architecture.n_filters, architecture.n_hidden, architecture.num_classes, architecture.n_layers
    conv_stack = 9 * f + (n - 1) * 9 * f * f + 2 * f * n
    head = 3 * f * h + 2 * h + h * h + 2 * h + h * c + c
    return conv_stack + head


def validate_architecture(value: Any, where: str) -> Architecture:
    if not isinstance(value, Mapping):
        raise _fail(where, "architecture", "a JSON object", value)
    if value.get("name", "triplanar-cnn") != "triplanar-cnn":
        raise _fail(where, "architecture.name", "'triplanar-cnn'", value.get("name"))
    for key, (low, high) in ARCHITECTURE_RANGES.items():
        if key in value and not (_is_int(value[key]) and low <= value[key] <= high):
            raise _fail(where, f"architecture.{key}", f"an integer in {low}..{high}", value[key])
    if "dropout" in value and not (_is_number(value["dropout"]) and 0 <= value["dropout"] < 1):
        raise _fail(where, "architecture.dropout", "a number in [0, 1)", value["dropout"])
    architecture = Architecture.from_json(dict(value))
    if "patch_size" in value and value["patch_size"] != architecture.patch_size:
        raise _fail(where, "architecture.patch_size", f"{architecture.patch_size} (2 * n_layers + 1)",
                    value["patch_size"])
    parameters = parameter_count_of(architecture)
    if parameters > MAX_PARAMETERS:
        raise ModelError(f"{where}: the architecture announces {parameters:,} parameters, more than the "
                         f"{MAX_PARAMETERS:,} MultiTaskSeg builds; the file is damaged or not a MultiTaskSeg model.")
    return architecture


def validate_normalization(value: Any, where: str) -> Dict[str, Dict[str, Any]]:
    if not isinstance(value, Mapping) or not value:
        raise _fail(where, "normalization", "a non-empty JSON object (modality -> rule)", value)
    rules: Dict[str, Dict[str, Any]] = {}
    for modality, rule in value.items():
        field = f"normalization.{modality}"
        if not isinstance(rule, Mapping) or not isinstance(rule.get("method"), str):
            raise _fail(where, field, "a JSON object with a 'method' name", rule)
        for key, setting in rule.items():
            if not (setting is None or isinstance(setting, (str, bool)) or _is_number(setting)):
                raise _fail(where, f"{field}.{key}", "a finite number, a string, true/false or null", setting)
        rules[modality] = dict(rule)
    for modality in rules:
        _check_rule_applies(rules, modality, where)
    return rules


def _check_rule_applies(rules: Mapping[str, Mapping], modality: str, where: str) -> None:
    """Apply the rule to a probe image: a rule normalize() does not know, or one whose settings
    are missing or give NaN/infinite values, is refused here and not on the user's first image."""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            result = normalize(_PROBE, modality, rules)
        finite = bool(np.all(np.isfinite(np.asarray(result, dtype=np.float64))))
    except (InputError, KeyError, TypeError, ValueError, ArithmeticError, IndexError, MemoryError) as error:
        raise ModelError(f"{where}: the intensity normalisation for {modality} ({dict(rules[modality])}) cannot be "
                         f"applied: {error!r}. The model file is damaged or needs a newer MultiTaskSeg.") from None
    if not finite:
        raise ModelError(f"{where}: the intensity normalisation for {modality} ({dict(rules[modality])}) gives "
                         f"NaN or infinite values (e.g. a zero scale); the model file is damaged.")


def validate_metadata(metadata: Any, where: str) -> Dict[str, Any]:
    """Check the whole metadata; returns the parts ``bundle_from_metadata`` builds from:
    architecture, classes, tasks, normalization, thresholds {class index: t}, target_spacing_mm,
    provenance. ModelError names the first field that is wrong."""
    if not isinstance(metadata, Mapping):
        raise _fail(where, "(top level)", "a JSON object", metadata)
    architecture = validate_architecture(metadata.get("architecture"), where)
    classes = [ClassInfo.from_json(entry) for entry in _list(metadata, "classes", where)]
    if len(classes) > MAX_CLASSES:
        raise ModelError(f"{where}: the model has {len(classes)} classes; labelmaps hold at most {MAX_CLASSES} "
                         f"(background included).")
    if [c.index for c in classes] != list(range(len(classes))) or len(classes) != architecture.num_classes:
        raise ModelError(f"{where}: the metadata lists {len(classes)} classes (indices {[c.index for c in classes][:12]}) "
                         f"but the network has {architecture.num_classes} outputs; they must be "
                         f"0..{architecture.num_classes - 1}.")
    if classes[0].task is not None:
        raise ModelError(f"{where}: class 0 must be the background shared by all tasks.")
    tasks = [TaskInfo.from_json(entry) for entry in _list(metadata, "tasks", where)]
    task_names = [task.name for task in tasks]
    if len(set(task_names)) != len(task_names):
        raise _fail(where, "tasks", "tasks with distinct names", task_names)
    names = {c.name for c in classes}
    for task in tasks:  # named before validate_class_set's more general words
        missing = [n for n in task.classes if n not in names]
        if missing:
            raise ModelError(f"{where}: task {task.name!r} names classes the model does not have: {missing}.")
    try:
        validate_class_set(classes, tasks)
    except ModelError as error:
        raise ModelError(f"{where}: {error}") from None
    normalization = validate_normalization(metadata.get("normalization"), where)
    for task in tasks:
        if task.modality not in normalization:
            raise ModelError(f"{where}: task {task.name!r} has modality {task.modality!r} without a normalisation rule.")
    return {"architecture": architecture, "classes": classes, "tasks": tasks, "normalization": normalization,
            "thresholds": _thresholds(metadata.get("thresholds"), classes, where),
            "target_spacing_mm": _target_spacing(metadata.get("target_spacing_mm"), where),
            "provenance": _provenance(metadata.get("provenance"), where)}


def _thresholds(value: Any, classes: List[ClassInfo], where: str) -> Dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(where, "thresholds", "a JSON object (class name -> threshold)", value)
    by_name = {c.name: c for c in classes}
    thresholds: Dict[int, float] = {}
    for name, threshold in value.items():
        if name not in by_name:
            raise ModelError(f"{where}: a default threshold names the unknown class {name!r}.")
        if by_name[name].decision != "threshold":
            raise ModelError(f"{where}: a default threshold is given for {name!r}, which is decided by the highest "
                             f"probability (argmax), not by a threshold.")
        if not _is_number(threshold):
            raise _fail(where, f"thresholds.{name}", "a number in [0, 1]", threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ModelError(f"{where}: the default threshold of {name!r} is {threshold}, outside [0, 1].")
        thresholds[by_name[name].index] = float(threshold)
    return thresholds


def _target_spacing(value: Any, where: str):
    if value is None or value == 0:
        return None  # "the median spacing of each input"
    low, high = TARGET_SPACING_RANGE_MM
    if not (_is_number(value) and low <= value <= high):
        raise _fail(where, "target_spacing_mm", f"null or a number of millimetres in {low:g}..{high:g}", value)
    return float(value)


def _provenance(value: Any, where: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(where, "provenance", "a JSON object", value)
    return dict(value)
