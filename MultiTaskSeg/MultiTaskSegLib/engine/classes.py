"""The network's output classes and tasks: names, colours, standard codes, Slicer terminology.

Each output channel of the multi-task network is a :class:`ClassInfo`. Channel 0 is the
background shared by all tasks; every other class belongs to exactly one task and is decided
either by ``"argmax"`` (the six brain tissues, as in the paper's brain MRI evaluation) or by a
probability ``"threshold"`` (pectoral muscle, coronary arteries: the paper picks their operating
point on a precision-recall curve).

Codes are DICOM/SNOMED CT codes as listed in 3D Slicer's own terminology files, so Slicer shows
the segments with their standard meaning. A class's terminology is stored as::

    {"category": [scheme, code, meaning], "type": [scheme, code, meaning],
     "modifier": [...],                  # optional, e.g. laterality
     "anatomic_region": [...],           # optional
     "anatomic_region_modifier": [...]}  # optional, only with anatomic_region

and :meth:`ClassInfo.slicer_terminology_string` turns it into the string Slicer keeps in a
segment's ``TerminologyEntry`` tag (format of
``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``)::

    context~catScheme^catCode^catMeaning~typeScheme^typeCode^typeMeaning~modScheme^modCode^modMeaning
           ~regionContext~regionScheme^regionCode^regionMeaning~regModScheme^regModCode^regModMeaning

with ``^^`` for an absent code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import InputError, ModelError

ClassKey = Union[int, str]  # a class given by its index or its name

# Context names exactly as in Slicer's Modules/Loadable/Terminologies/Resources/*.json, so that
# Slicer finds the entries in the terminologies it loads at start-up.
SEGMENTATION_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

DECISIONS = ("argmax", "threshold")
MODALITIES = ("MR", "CT")
TERMINOLOGY_KEYS = ("category", "type", "modifier", "anatomic_region", "anatomic_region_modifier")
_REQUIRED_TERMINOLOGY_KEYS = ("category", "type")

Code = Tuple[str, str, str]  # (coding scheme designator, code value, code meaning)
MAX_NAME_LENGTH = 128
# Separators of Slicer's terminology entry ("~", "^") and of a .seg.nrrd segment's tag list ("|").
_TERMINOLOGY_SEPARATORS = "~^|"


def _is_plain_text(value: str) -> bool:
    """One line of printable, valid UTF-8 text (no NUL, newline or lone surrogate: they would
    corrupt file headers or abort ITK)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return value.isprintable()


def check_name(value: Any, what: str) -> str:
    """A class or task name: 1..128 characters of plain text without path separators or ".."
    (class names become parts of file names)."""
    if not isinstance(value, str) or not value.strip():
        raise ModelError(f"{what} needs a non-empty name, got {value!r}.")
    if len(value) > MAX_NAME_LENGTH or not _is_plain_text(value) or any(part in value for part in ("/", "\\", "..")):
        raise ModelError(f"{what} has the name {value[:MAX_NAME_LENGTH]!r}: names must be at most {MAX_NAME_LENGTH} "
                         f"printable characters without '/', '\\', '..', control characters or invalid UTF-8. "
                         f"Fix the model bundle metadata.")
    return value


def _check_code(value: Any, what: str) -> Code:
    """A [scheme, code, meaning] triple of non-empty plain strings without Slicer's separators."""
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(isinstance(v, str) and v for v in value):
        raise ModelError(
            f"{what} must be a list of three non-empty strings [scheme, code, meaning], got {value!r}; "
            "fix the class terminology in the model bundle metadata."
        )
    if any(c in v for v in value for c in _TERMINOLOGY_SEPARATORS) or not all(_is_plain_text(v) for v in value):
        raise ModelError(
            f"{what} {value!r} contains '~', '^' or '|', which Slicer uses as separators, or a control "
            "character or invalid UTF-8; remove them from the model bundle metadata."
        )
    return (value[0], value[1], value[2])


def _check_terminology(terminology: Mapping[str, Any], name: str) -> Dict[str, Code]:
    if not isinstance(terminology, Mapping):
        raise ModelError(f"Class '{name}': terminology must be a mapping, got {type(terminology).__name__}.")
    unknown = sorted(set(terminology) - set(TERMINOLOGY_KEYS))
    if unknown:
        raise ModelError(
            f"Class '{name}': unknown terminology keys {unknown}; allowed are {list(TERMINOLOGY_KEYS)}."
        )
    missing = [k for k in _REQUIRED_TERMINOLOGY_KEYS if k not in terminology]
    if missing:
        raise ModelError(
            f"Class '{name}': terminology lacks {missing}; give at least a category and a type code."
        )
    if "anatomic_region_modifier" in terminology and "anatomic_region" not in terminology:
        raise ModelError(f"Class '{name}': an anatomic_region_modifier needs an anatomic_region.")
    return {k: _check_code(terminology[k], f"Class '{name}' terminology '{k}'") for k in TERMINOLOGY_KEYS if k in terminology}


def _format_code(code: Optional[Sequence[str]]) -> str:
    return "^".join(code) if code else "^^"


@dataclass(frozen=True)
class ClassInfo:
    """One output channel of the network.

    ``index``: output channel, 0 = background shared by all tasks. ``color``: r, g, b in 0..1.
    ``task``: name of the task the class belongs to, None for background. ``decision``:
    ``"argmax"`` or ``"threshold"`` (see ``thresholds.py``), None for background.
    ``terminology``: standard codes (see module docstring); empty for background, which never
    becomes a segment.
    """

    index: int
    name: str
    color: Tuple[float, float, float]
    task: Optional[str]
    decision: Optional[str]
    terminology: Dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise ModelError(f"Class index must be a non-negative integer, got {self.index!r}.")
        check_name(self.name, f"Class {self.index}")
        color = tuple(self.color) if isinstance(self.color, (list, tuple)) else ()
        if len(color) != 3 or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and 0.0 <= c <= 1.0 for c in color
        ):
            raise ModelError(f"Class '{self.name}': color must be three numbers r, g, b in 0..1, got {self.color!r}.")
        object.__setattr__(self, "color", tuple(float(c) for c in color))
        if self.index == 0:
            if self.task is not None or self.decision is not None:
                raise ModelError(
                    f"Class 0 ('{self.name}') is the background shared by all tasks: its task and decision must be null."
                )
            if self.terminology:
                object.__setattr__(self, "terminology", dict(_check_terminology(self.terminology, self.name)))
            return
        if not isinstance(self.task, str) or not self.task:
            raise ModelError(f"Class '{self.name}' (index {self.index}) needs the name of its task.")
        if self.decision not in DECISIONS:
            raise ModelError(
                f"Class '{self.name}': decision must be one of {list(DECISIONS)}, got {self.decision!r}."
            )
        object.__setattr__(self, "terminology", dict(_check_terminology(self.terminology, self.name)))

    @property
    def is_background(self) -> bool:
        return self.index == 0

    def slicer_terminology_string(self) -> str:
        """The string Slicer stores in a segment's ``TerminologyEntry`` tag; "" for background."""
        if not self.terminology:
            return ""
        t = self.terminology
        region = t.get("anatomic_region")
        return "~".join(
            [
                SEGMENTATION_CONTEXT,
                _format_code(t["category"]),
                _format_code(t["type"]),
                _format_code(t.get("modifier")),
                ANATOMIC_CONTEXT,
                _format_code(region),
                _format_code(t.get("anatomic_region_modifier") if region else None),
            ]
        )

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "name": self.name,
            "color": list(self.color),
            "task": self.task,
            "decision": self.decision,
            "terminology": {k: list(v) for k, v in self.terminology.items()},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ClassInfo":
        """Build from :meth:`to_json` output; raise ModelError on missing or malformed fields."""
        if not isinstance(d, Mapping):
            raise ModelError(f"A class entry must be a JSON object, got {type(d).__name__}; check the model bundle metadata.")
        missing = [k for k in ("index", "name", "color", "task", "decision") if k not in d]
        if missing:
            raise ModelError(
                f"Class entry {dict(d)!r} lacks {missing}; the model bundle metadata is incomplete."
            )
        return cls(
            index=d["index"],
            name=d["name"],
            color=tuple(d["color"]) if isinstance(d["color"], (list, tuple)) else d["color"],
            task=d["task"],
            decision=d["decision"],
            terminology=d.get("terminology") or {},
        )


@dataclass(frozen=True)
class TaskInfo:
    """A segmentation task: the modality it expects and the names of its classes (no background)."""

    name: str
    modality: str
    description: str
    classes: Tuple[str, ...]

    def __post_init__(self) -> None:
        check_name(self.name, "A task")
        if not isinstance(self.description, str) or not _is_plain_text(self.description):
            raise ModelError(f"Task '{self.name}': its description must be one line of plain text.")
        if self.modality not in MODALITIES:
            raise ModelError(
                f"Task '{self.name}': modality must be one of {list(MODALITIES)}, got {self.modality!r}."
            )
        if not isinstance(self.classes, (list, tuple)) or not self.classes or not all(isinstance(c, str) for c in self.classes):
            raise ModelError(f"Task '{self.name}' needs a non-empty list of class names.")
        object.__setattr__(self, "classes", tuple(self.classes))

    def to_json(self) -> dict:
        return {"name": self.name, "modality": self.modality, "description": self.description, "classes": list(self.classes)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TaskInfo":
        if not isinstance(d, Mapping):
            raise ModelError(f"A task entry must be a JSON object, got {type(d).__name__}; check the model bundle metadata.")
        missing = [k for k in ("name", "modality", "classes") if k not in d]
        if missing:
            raise ModelError(f"Task entry {dict(d)!r} lacks {missing}; the model bundle metadata is incomplete.")
        return cls(name=d["name"], modality=d["modality"], description=d.get("description", ""), classes=d["classes"])


def validate_class_set(classes: Sequence[ClassInfo], tasks: Optional[Sequence[TaskInfo]] = None) -> None:
    """Check that classes are numbered 0..N-1 in order, names are unique, background comes first,
    and (if tasks are given) every class belongs to a listed task that names it. Raises ModelError."""
    if not classes:
        raise ModelError("The model has no classes; the bundle metadata must list at least background and one class.")
    for position, info in enumerate(classes):
        if info.index != position:
            raise ModelError(
                f"Class '{info.name}' has index {info.index} but is listed at position {position}; "
                "list classes in output-channel order 0..N-1."
            )
    names = [c.name for c in classes]
    # Names are looked up case-insensitively (class_index), so they must differ beyond case.
    folded = [n.strip().casefold() for n in names]
    duplicates = sorted({n for n, key in zip(names, folded) if folded.count(key) > 1})
    if duplicates:
        raise ModelError(f"Class names must be unique (ignoring case), repeated: {duplicates}.")
    if len(classes) < 2:
        raise ModelError("The model has only a background class; it needs at least one class to segment.")
    if tasks is None:
        return
    by_task = {t.name: t for t in tasks}
    for info in classes[1:]:
        task = by_task.get(info.task)
        if task is None:
            raise ModelError(f"Class '{info.name}' belongs to task '{info.task}', which is not among {sorted(by_task)}.")
        if info.name not in task.classes:
            raise ModelError(f"Task '{task.name}' does not list its class '{info.name}'.")
    for task in tasks:
        unknown = [n for n in task.classes if n not in names]
        if unknown:
            raise ModelError(f"Task '{task.name}' lists unknown classes {unknown}.")


def classes_of_task(classes: Iterable[ClassInfo], task: str) -> List[ClassInfo]:
    return [c for c in classes if c.task == task]


def class_index(classes: Sequence[ClassInfo], key: ClassKey) -> int:
    """The index of a class given by index or by name; names match case-insensitively and ignore
    surrounding spaces, so "Pectoral muscle" typed in Slicer's console finds "pectoral muscle".
    Unknown keys raise InputError listing the valid names."""
    if isinstance(key, str):
        wanted = key.strip().lower()
        for info in classes:
            if info.name.lower() == wanted:
                return info.index
    elif not isinstance(key, bool) and hasattr(key, "__index__") and 0 <= int(key) < len(classes):
        return int(key)  # int and numpy integers
    names = ", ".join(repr(c.name) for c in classes if not c.is_background)
    raise InputError(f"The model has no class {key!r}; its classes are {names} "
                     f"(or their indices 1..{len(classes) - 1}).")


def foreground_classes(classes: Iterable[ClassInfo]) -> List[int]:
    """Indices of every class but background: what is segmented when no classes are chosen."""
    return [c.index for c in classes if not c.is_background]


def selected_class_indices(classes: Sequence[ClassInfo], keys: Optional[Sequence[ClassKey]]) -> List[int]:
    """Sorted indices of the chosen classes (names or indices); None or empty: every foreground class.
    Background cannot be chosen: it is what is left unlabelled."""
    if not keys:
        return foreground_classes(classes)
    indices = sorted({class_index(classes, key) for key in keys})
    if 0 in indices:
        example = next((c.name for c in classes if not c.is_background), "white matter")
        raise InputError(f"Background cannot be chosen as a class to segment; name the classes to label "
                         f"(e.g. '{example}').")
    return indices


def segmentation_segments(classes: Iterable[ClassInfo], selected: Iterable[int]) -> List[Dict[str, Any]]:
    """Segment descriptions (name, colour, label value, terminology) of the selected classes, as
    ``image_writing.write_segmentation_nrrd`` takes them; the label value is the class index."""
    chosen = set(selected)
    return [{"name": c.name, "color": c.color, "label_value": c.index, "terminology": c.slicer_terminology_string()}
            for c in classes if c.index in chosen]


def _rgb(r: int, g: int, b: int) -> Tuple[float, float, float]:
    """Slicer lists colours as 0..255 integers; ClassInfo keeps 0..1."""
    return (r / 255.0, g / 255.0, b / 255.0)


_ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
_RIGHT_AND_LEFT = ("SCT", "51440002", "Right and left")

# Sources (Slicer/Slicer repository, Modules/Loadable/Terminologies/Resources/):
#   [DM]  SegmentationCategoryTypeModifier-DICOM-Master.json   (category 123037004 types and modifiers)
#   [GA]  SegmentationCategoryTypeModifier-SlicerGeneralAnatomy.json   (recommendedDisplayRGBValue)
#   [GAC] Base/Logic/Resources/ColorFiles/GenericAnatomyColors.txt
#   [SPL] Base/Logic/Resources/ColorFiles/SPL-BrainAtlas-2012-ColorFile.txt
#   [FS]  FreeSurferColorLUT.txt (FreeSurfer's standard label colour table)
#   [7153] DICOM PS3.16 CID 7153 "CNS Segmentation Type"
DEFAULT_CLASSES: Tuple[ClassInfo, ...] = (
    ClassInfo(0, "background", (0.0, 0.0, 0.0), None, None, {}),
    # Type 68523003 Cerebral White Matter [DM]; colour [GA] 250,250,225.
    ClassInfo(1, "white matter", _rgb(250, 250, 225), "brain", "argmax",
              {"category": _ANATOMICAL_STRUCTURE, "type": ("SCT", "68523003", "Cerebral White Matter")}),
    # Type 40146001 Cerebral cortex [DM] ("Cerebral Grey Matter" in [GA]); colour [GA] 128,174,128.
    ClassInfo(2, "cortical grey matter", _rgb(128, 174, 128), "brain", "argmax",
              {"category": _ANATOMICAL_STRUCTURE, "type": ("SCT", "40146001", "Cerebral cortex")}),
    # No single code for "basal ganglia and thalami": FMA 223151 Subcortical gray matter [7153] covers
    # them (not in Slicer's lists, Slicer shows the code as given). Colour: "thalamus" [GAC] 166,113,137.
    ClassInfo(3, "basal ganglia and thalami", _rgb(166, 113, 137), "brain", "argmax",
              {"category": _ANATOMICAL_STRUCTURE, "type": ("FMA", "223151", "Subcortical gray matter")}),
    # Type 35764002 Brain ventricle [DM]; colour [GA] 88,106,215.
    ClassInfo(4, "ventricular cerebrospinal fluid", _rgb(88, 106, 215), "brain", "argmax",
              {"category": _ANATOMICAL_STRUCTURE, "type": ("SCT", "35764002", "Brain ventricle")}),
    # Type 113305005 Cerebellum [DM] (no recommended colour); colour "cerebellar cortex" [SPL] 230,148,34.
    ClassInfo(5, "cerebellum", _rgb(230, 148, 34), "brain", "argmax",
              {"category": _ANATOMICAL_STRUCTURE, "type": ("SCT", "113305005", "Cerebellum")}),
    # Type 119238007 Brain stem [DM] (no recommended colour); colour "Brain-Stem" [FS] 119,159,176.
    ClassInfo(6, "brain stem", _rgb(119, 159, 176), "brain", "argmax",
              {"category": _ANATOMICAL_STRUCTURE, "type": ("SCT", "119238007", "Brain stem")}),
    # Type 60005003 Pectoralis major muscle, modifier 51440002 Right and left [DM] (breast MRI shows
    # both sides); colour "muscles of thoracic wall" [GAC]/"Chest wall muscle" [GA] 188,95,76.
    ClassInfo(7, "pectoral muscle", _rgb(188, 95, 76), "breast", "threshold",
              {"category": _ANATOMICAL_STRUCTURE, "type": ("SCT", "60005003", "Pectoralis major muscle"),
               "modifier": _RIGHT_AND_LEFT}),
    # Type 41801008 Coronary artery, modifier 51440002 Right and left [DM] (both coronary trees);
    # colour "artery" [GAC]/[GA] 216,101,79.
    ClassInfo(8, "coronary arteries", _rgb(216, 101, 79), "coronary", "threshold",
              {"category": _ANATOMICAL_STRUCTURE, "type": ("SCT", "41801008", "Coronary artery"),
               "modifier": _RIGHT_AND_LEFT}),
)

DEFAULT_TASKS: Tuple[TaskInfo, ...] = (
    TaskInfo("brain", "MR", "Six brain tissues in T1-weighted brain MRI",
             tuple(c.name for c in DEFAULT_CLASSES if c.task == "brain")),
    TaskInfo("breast", "MR", "Pectoral muscle in T1-weighted breast MRI", ("pectoral muscle",)),
    TaskInfo("coronary", "CT", "Coronary arteries in cardiac CT angiography", ("coronary arteries",)),
)
# The default model's tasks by name, in one place for the CLI's choices and the training data.
TASK_NAMES: Tuple[str, ...] = tuple(task.name for task in DEFAULT_TASKS)
