"""Model bundles: one ``.safetensors`` file, weights plus JSON metadata, that never runs code on load.

The metadata (safetensors header key ``multitaskseg``) holds everything needed to use the weights:
architecture, classes (name, colour, terminology code, task, decision rule), tasks (modality,
classes), intensity normalisation per modality, default thresholds of the thresholded classes,
the isotropic spacing the model expects, and provenance. Loading validates the metadata against the
weights; pickle-based checkpoints (``torch.save`` files) are refused, never unpickled. The metadata
is checked against a schema of types and ranges (``bundle_schema``) before any network is built,
and the weights must be finite floating-point numbers.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as safetensors_bytes

from .. import __version__
from .atomic_files import write_bytes_atomically
from .bundle_schema import MAX_METADATA_CHARS, check_json_depth, validate_metadata
from .classes import DEFAULT_CLASSES, DEFAULT_TASKS, ClassInfo, ClassKey, TaskInfo, class_index
from .errors import InputError, ModelError, OutputError
from .image_headers import check_regular_file
from .network import Architecture, TriplanarCNN
from .normalization import DEFAULT_NORMALIZATION

FORMAT = "multitaskseg.bundle"
FORMAT_VERSION = 1
METADATA_KEY = "multitaskseg"
DEFAULT_MODEL_NAME = "multitaskseg-3tasks.safetensors"
MODEL_ENV_VAR = "MULTITASKSEG_MODEL"

PathLike = Union[str, "os.PathLike[str]"]


def models_dir() -> Path:
    """``Resources/Models`` of the Slicer module: beside the package in the source tree and in Slicer."""
    return Path(__file__).resolve().parents[2] / "Resources" / "Models"


def default_model_path() -> Path:
    """The model used when none is given: $MULTITASKSEG_MODEL, else the shipped one."""
    override = os.environ.get(MODEL_ENV_VAR)
    return Path(override) if override else models_dir() / DEFAULT_MODEL_NAME


@dataclass
class ModelBundle:
    """A network with the metadata that says what its outputs mean."""

    model: TriplanarCNN
    classes: List[ClassInfo]
    tasks: List[TaskInfo]
    normalization: Dict[str, Dict[str, Any]] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_NORMALIZATION)))
    default_thresholds: Dict[int, float] = field(default_factory=dict)
    target_spacing_mm: Optional[float] = None
    provenance: Dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None

    @property
    def architecture(self) -> Architecture:
        return self.model.arch

    @property
    def metadata(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "architecture": self.architecture.to_json(),
            "classes": [c.to_json() for c in self.classes],
            "tasks": [t.to_json() for t in self.tasks],
            "normalization": self.normalization,
            "thresholds": {self.classes[i].name: t for i, t in sorted(self.default_thresholds.items())},
            "target_spacing_mm": self.target_spacing_mm,
            "provenance": self.provenance,
        }

    def class_index(self, name_or_index: ClassKey) -> int:
        """Index of a class given by name (case-insensitive) or index (see ``classes.class_index``)."""
        return class_index(self.classes, name_or_index)

    def save(self, path: PathLike, overwrite: bool = False) -> Path:
        """Write the bundle atomically (``atomic_files``: temporary file, read back, then a rename
        that replaces nothing unless ``overwrite``), with the mode the umask gives new files."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise ModelError(f"{path} exists already; choose another name or allow overwriting.")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"Cannot create the folder {path.parent}: {error.strerror}.") from None
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()
                   if not k.endswith("num_batches_tracked")}
        metadata = {METADATA_KEY: json.dumps(self.metadata)}
        try:
            write_bytes_atomically(path, lambda temporary: temporary.write_bytes(safetensors_bytes(tensors, metadata)),
                                   overwrite, check=_check_saved)
        except OutputError as error:
            if "exists already" in str(error):
                raise ModelError(f"{path} exists already; choose another name or allow overwriting.") from None
            raise
        self.path = path
        return path


def _check_saved(temporary: Path) -> None:
    """The written bundle reads back (a full disk leaves it short)."""
    try:
        _read_header(temporary)
    except ModelError:
        raise OutputError("the written model file does not read back (is the disk full?)") from None


def _refuse_pickle(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(9)
    # A safetensors file is an 8-byte header length, then its JSON header: byte 8 is "{". Only
    # otherwise look for what torch.save writes: a zip archive (PK..) or a raw pickle (0x80).
    if len(head) == 9 and head[8:9] == b"{":
        return
    if head.startswith(b"PK") or head[:1] == b"\x80":
        raise ModelError(f"{path} is a pickle-based PyTorch checkpoint. Loading it could run arbitrary code, "
                         "so MultiTaskSeg refuses it. Use a MultiTaskSeg .safetensors bundle "
                         "(the output of 'multitaskseg train').")


def _parse_json(text: str, path: Path, what: str) -> Any:
    check_json_depth(text, str(path))  # before parsing: the parser would recurse 100,000 levels deep
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise ModelError(f"{path}: {what} is not valid JSON ({exc}).") from None


def _read_header(path: Path) -> Dict[str, Any]:
    """The JSON metadata, read from the safetensors header without touching the weights."""
    with open(path, "rb") as f:
        size_bytes = f.read(8)
        if len(size_bytes) < 8:
            raise ModelError(f"{path} is not a model bundle: the file is too short (truncated?).")
        size = int.from_bytes(size_bytes, "little")
        if size <= 0 or size > 100 * 1024 * 1024 or size + 8 > os.fstat(f.fileno()).st_size:
            raise ModelError(f"{path} is not a valid .safetensors model bundle (bad header size: truncated or corrupt).")
        try:
            text = f.read(size).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelError(f"{path} has a corrupt safetensors header ({exc}).") from None
    header = _parse_json(text, path, "the safetensors header")
    metadata_block = header.get("__metadata__") if isinstance(header, dict) else None
    raw = metadata_block.get(METADATA_KEY) if isinstance(metadata_block, dict) else None
    if not isinstance(raw, str):
        raise ModelError(f"{path} is a safetensors file but not a MultiTaskSeg bundle (no '{METADATA_KEY}' metadata).")
    if len(raw) > MAX_METADATA_CHARS:
        raise ModelError(f"{path}: the bundle metadata is {len(raw):,} characters long, more than a MultiTaskSeg "
                         f"bundle's (at most {MAX_METADATA_CHARS:,}); the file is corrupt or not a MultiTaskSeg model.")
    metadata = _parse_json(raw, path, "the bundle metadata")
    if not isinstance(metadata, dict):
        raise ModelError(f"{path}: the bundle metadata must be a JSON object, got {type(metadata).__name__}.")
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{path}: unsupported bundle format {metadata.get('format')!r} version "
                         f"{metadata.get('format_version')!r}; this MultiTaskSeg reads {FORMAT} version {FORMAT_VERSION}.")
    return metadata


def bundle_from_metadata(metadata: Mapping[str, Any], state_dict: Optional[Mapping[str, torch.Tensor]] = None,
                         path: Optional[Path] = None) -> ModelBundle:
    """Build and validate a bundle from metadata and (optionally) weights; ModelError says what does not match.

    The metadata is checked against the schema (``bundle_schema.validate_metadata``) before the
    network is built; the weights must have the architecture's names and shapes and be finite
    floating-point numbers.
    """
    where = str(path) if path else "the model bundle"
    parts = validate_metadata(metadata, where)
    model = TriplanarCNN(parts["architecture"])
    if state_dict is not None:
        expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state_dict) if tuple(state_dict[k].shape) != tuple(expected[k]))
        if missing or unexpected or wrong:
            raise ModelError(f"{where}: the weights do not match the architecture in its metadata "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}).")
        check_weights(state_dict, where)
        model.load_state_dict(state_dict, strict=False)
    model.eval()
    return ModelBundle(model=model, classes=parts["classes"], tasks=parts["tasks"],
                       normalization=parts["normalization"], default_thresholds=parts["thresholds"],
                       target_spacing_mm=parts["target_spacing_mm"], provenance=parts["provenance"], path=path)


def check_weights(state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse weights that are not floating point (an integer tensor would be cast silently) or
    not finite (NaN or infinite weights label everything background), and negative batch-norm
    variances (their square root is NaN)."""
    for name, tensor in state_dict.items():
        if not tensor.is_floating_point():
            raise ModelError(f"{where}: the weight tensor {name!r} is {str(tensor.dtype).replace('torch.', '')}, "
                             f"not floating point; the model file is damaged or not a MultiTaskSeg model.")
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelError(f"{where}: the weight tensor {name!r} holds {bad:,} NaN or infinite values (a diverged "
                             f"training run or a damaged file); this model cannot segment. Use another model.")
        if name.endswith("running_var") and bool((tensor < 0).any()):
            raise ModelError(f"{where}: the batch-norm variances {name!r} are negative; the model file is damaged.")


def read_metadata(path: Optional[PathLike] = None) -> Dict[str, Any]:
    """The bundle's metadata without loading the weights (for ``multitaskseg info``), checked
    against the schema (nothing is built)."""
    resolved = _existing_model_path(path)
    try:
        metadata = _read_header(resolved)
    except OSError as exc:
        raise ModelError(f"Cannot read the model file {resolved}: {exc.strerror or exc}.") from None
    validate_metadata(metadata, str(resolved))
    return metadata


def _existing_model_path(path: Optional[PathLike]) -> Path:
    resolved = Path(path) if path is not None else default_model_path()
    if not resolved.exists():
        if path is None:
            raise ModelError(f"No model given and the default model {resolved} is not there. "
                             "Give one with --model, or train one with 'multitaskseg train'.")
        raise ModelError(f"Model file {resolved} does not exist. Check the path.")
    try:
        check_regular_file(resolved, "The model file")  # a named pipe would block the reading
    except InputError as error:  # the model is what is wrong here
        raise ModelError(str(error)) from None
    try:
        _refuse_pickle(resolved)
    except OSError as error:
        raise ModelError(f"Cannot read the model file {resolved}: {error.strerror}.") from None
    return resolved


def load_bundle(path: Optional[PathLike] = None) -> ModelBundle:
    """Load and validate a bundle; ``None`` loads the default model (see ``default_model_path``)."""
    resolved = _existing_model_path(path)
    try:
        metadata = _read_header(resolved)
        validate_metadata(metadata, str(resolved))  # before the weights are read
        # Read here, parsed from memory: safetensors' own file opening cannot take every name
        # (not valid UTF-8), and a model is a few megabytes.
        state_dict = load_safetensors_bytes(resolved.read_bytes())
    except (SafetensorError, ValueError) as exc:
        raise ModelError(f"{resolved}: the weights cannot be read ({exc}); the file is corrupt or truncated.") from None
    except OSError as exc:
        raise ModelError(f"Cannot read the model file {resolved}: {exc.strerror or exc}.") from None
    return bundle_from_metadata(metadata, state_dict, resolved)


def new_bundle(classes: Sequence[ClassInfo] = DEFAULT_CLASSES, tasks: Sequence[TaskInfo] = DEFAULT_TASKS,
               arch: Optional[Architecture] = None, thresholds: Optional[Mapping[int, float]] = None,
               provenance: Optional[Mapping[str, Any]] = None, seed: Optional[int] = None) -> ModelBundle:
    """A bundle with freshly initialised weights for ``classes`` (training starts here)."""
    if seed is not None:
        torch.manual_seed(seed)
    arch = arch or Architecture(num_classes=len(classes))
    if thresholds is None:
        thresholds = {c.index: 0.5 for c in classes if c.decision == "threshold"}
    info = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "software": f"multitaskseg {__version__}", "torch": torch.__version__}
    info.update(provenance or {})
    return ModelBundle(model=TriplanarCNN(arch), classes=list(classes), tasks=list(tasks),
                       default_thresholds=dict(thresholds), provenance=info)


def make_random_bundle(seed: int = 0, classes: Sequence[ClassInfo] = DEFAULT_CLASSES,
                       tasks: Sequence[TaskInfo] = DEFAULT_TASKS, n_layers: int = 25) -> ModelBundle:
    """An untrained bundle whose outputs still vary between voxels: for tests, never for use.

    Batch-norm statistics are randomised too, since fresh ones make every layer an identity-like
    map and the outputs nearly constant, which would let tests pass for the wrong reasons.
    ``n_layers`` below the paper's 25 makes a quicker network for tests.
    """
    arch = Architecture(num_classes=len(classes), n_layers=n_layers)
    bundle = new_bundle(classes, tasks, arch=arch, seed=seed, provenance={"note": "random weights, for tests only"})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in bundle.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.8, 1.6, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
        bundle.model.head[-1].weight.mul_(20.0)
    bundle.model.eval()
    return bundle
