"""Users' training and test data in the nnU-Net v2 raw-dataset layout.

A dataset is one folder ``DatasetXXX_Name/`` holding::

    dataset.json
    imagesTr/<case>_0000<file_ending>     one channel per case (channel 0000 only)
    labelsTr/<case><file_ending>          integer labelmap on the image's grid
    imagesTs/<case>_0000<file_ending>     optional held-out images
    labelsTs/<case><file_ending>          optional references for the held-out images

``dataset.json`` follows nnU-Net v2: ``channel_names`` ({"0": "T1"} or {"0": "CT"}),
``labels`` (name -> integer value, "background": 0), ``numTraining`` and ``file_ending``.
MultiTaskSeg reads one optional extra entry::

    "multitaskseg": {"task": "breast",
                     "class_map": {"pectoralis major": "pectoral muscle"}}

``task`` names the task the dataset belongs to ("brain", "breast", "coronary" for the
default bundle); without it the task is inferred from the label names. ``class_map``
renames dataset labels to the bundle's class names when they differ, so the data
files need not be rewritten. Label names are matched case-insensitively.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..engine.classes import DEFAULT_TASKS
from ..engine.errors import InputError, OutputError
from ..engine.progress import CancelCheck, ProgressCallback, check_cancel, report

if TYPE_CHECKING:
    from ..engine.geometry import Volume

DATASET_JSON = "dataset.json"
CHANNEL_SUFFIX = "_0000"
DEFAULT_FILE_ENDING = ".nii.gz"
DATASET_NAME_PATTERN = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_\-]+$")

# The foreground classes of each task of the default bundle; used to infer a dataset's task
# from its label names when dataset.json does not say it.
TASK_CLASS_NAMES: Dict[str, Tuple[str, ...]] = {task.name: task.classes for task in DEFAULT_TASKS}


@dataclass
class Case:
    """One image (channel 0000) and its labelmap, if the dataset has one."""

    case_id: str
    image_path: Path
    label_path: Optional[Path]


@dataclass
class TaskDataset:
    """A loaded nnU-Net v2 dataset folder: its metadata and its cases, nothing read yet."""

    root: Path
    name: str
    modality: str
    labels: Dict[str, int]
    file_ending: str
    training: List[Case]
    test: List[Case]
    task: str
    class_map: Dict[str, str] = field(default_factory=dict)

    @property
    def labelled_test_count(self) -> int:
        """Test cases that have a label map (imagesTs/ cases may come without one)."""
        return sum(case.label_path is not None for case in self.test)

    def label_mapping(self, class_names: Sequence[str]) -> Dict[int, int]:
        """Map each label value of this dataset to the index of the bundle class of that name.

        ``class_names`` are the bundle's classes in index order. Names are compared
        case-insensitively after applying the dataset's ``class_map``. A dataset label
        without a bundle class of that name raises InputError saying how to fix it.
        """
        bundle_index = {name.strip().lower(): index for index, name in enumerate(class_names)}
        mapping: Dict[int, int] = {}
        unknown: List[str] = []
        for label_name, value in self.labels.items():
            bundle_name = self.class_map.get(label_name, label_name).strip().lower()
            if bundle_name in bundle_index:
                mapping[value] = bundle_index[bundle_name]
            else:
                unknown.append(label_name)
        if unknown:
            raise InputError(
                f"Dataset {self.name}: label(s) {', '.join(repr(n) for n in unknown)} match no class "
                f"of the model ({', '.join(repr(n) for n in class_names)}). Rename them in "
                f"{self.root / DATASET_JSON} under 'labels', or map them with "
                '"multitaskseg": {"class_map": {"<dataset label>": "<model class>"}}.'
            )
        return mapping


def load_dataset(folder) -> TaskDataset:
    """Read and check an nnU-Net v2 dataset folder; raise InputError on anything malformed."""
    root = Path(folder).expanduser()
    meta = _read_dataset_json(root)
    file_ending = meta["file_ending"]
    labels = _parse_labels(root, meta["labels"])
    extra = meta.get("multitaskseg") or {}
    if not isinstance(extra, dict):
        raise InputError(f"{root / DATASET_JSON}: 'multitaskseg' must be an object like {{\"task\": \"brain\"}}.")
    class_map = _parse_class_map(root, extra.get("class_map") or {}, labels)

    training = _find_cases(root, "imagesTr", "labelsTr", file_ending, labels_required=True)
    test = _find_cases(root, "imagesTs", "labelsTs", file_ending, labels_required=False)
    if not training and not test:
        raise InputError(
            f"{root} has no images: put '<case>{CHANNEL_SUFFIX}{file_ending}' files into imagesTr/ (and imagesTs/)."
        )
    num_training = meta.get("numTraining")
    if num_training is not None and int(num_training) != len(training):
        raise InputError(
            f"{root / DATASET_JSON} says numTraining={num_training} but imagesTr/ holds {len(training)} "
            f"case(s): set numTraining to {len(training)} or add the missing cases."
        )
    task = _resolve_task(root, extra.get("task"), labels, class_map)
    return TaskDataset(
        root=root,
        name=root.name,
        modality=_modality(meta["channel_names"]),
        labels=labels,
        file_ending=file_ending,
        training=training,
        test=test,
        task=task,
        class_map=class_map,
    )


def write_dataset(
    folder,
    name: str,
    modality: str,
    labels: Mapping[str, int],
    cases: Iterable[Tuple[str, "Volume", np.ndarray, str]],
    task: str,
    overwrite: bool = False,
    description: str = "",
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCheck] = None,
    expected_cases: Optional[int] = None,
) -> TaskDataset:
    """Write ``folder/name`` as an nnU-Net v2 dataset and return it loaded.

    ``cases`` yields ``(case_id, image Volume, labels array (z, y, x), split)`` with split
    "train" (imagesTr/labelsTr) or "test" (imagesTs/labelsTs); a generator is consumed
    lazily, so cases are made one at a time. The folder is assembled next to its final
    place and moved there at the end: a cancelled or failed run leaves nothing behind.
    ``expected_cases`` only scales the progress reports.
    """
    from ..engine import image_writing  # imported here: SimpleITK is only needed when writing

    if not DATASET_NAME_PATTERN.match(name):
        raise OutputError(f"Dataset name {name!r} must look like 'Dataset123_Name' (nnU-Net v2 naming).")
    modality = modality.upper()
    if modality not in ("MR", "CT"):
        raise OutputError(f"Modality {modality!r} must be 'MR' or 'CT'.")
    parent = Path(folder).expanduser()
    root = parent / name
    if root.exists() and not overwrite:
        raise OutputError(f"{root} exists already: choose another folder or pass overwrite=True.")
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
    try:
        num_training = 0
        total = max(int(expected_cases or 0), 1)
        for index, (case_id, image, label_array, split) in enumerate(cases):
            check_cancel(cancel)
            if split not in ("train", "test"):
                raise OutputError(f"Case {case_id!r}: split must be 'train' or 'test', not {split!r}.")
            label_array = np.asarray(label_array)
            if label_array.shape != image.array.shape:
                raise OutputError(
                    f"Case {case_id!r}: labels of shape {label_array.shape} do not match the image {image.array.shape}."
                )
            images_dir, labels_dir = ("imagesTr", "labelsTr") if split == "train" else ("imagesTs", "labelsTs")
            (staging / images_dir).mkdir(exist_ok=True)
            (staging / labels_dir).mkdir(exist_ok=True)
            image_writing.write_volume(image, staging / images_dir / f"{case_id}{CHANNEL_SUFFIX}{DEFAULT_FILE_ENDING}")
            image_writing.write_labelmap(
                label_array.astype(np.uint8), image, staging / labels_dir / f"{case_id}{DEFAULT_FILE_ENDING}"
            )
            num_training += split == "train"
            report(progress, min((index + 1) / total, 1.0), f"{name}: wrote {case_id}")
        meta = {
            "channel_names": {"0": "CT" if modality == "CT" else "T1"},
            "labels": {label: int(value) for label, value in labels.items()},
            "numTraining": num_training,
            "file_ending": DEFAULT_FILE_ENDING,
            "name": name.split("_", 1)[1],
            "description": description,
            "multitaskseg": {"task": task},
        }
        (staging / DATASET_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        check_cancel(cancel)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return load_dataset(root)


def _read_dataset_json(root: Path) -> dict:
    path = root / DATASET_JSON
    if not root.is_dir():
        raise InputError(f"Dataset folder {root} does not exist: give the path of a 'DatasetXXX_Name' folder.")
    if not path.is_file():
        raise InputError(
            f"{root} has no {DATASET_JSON}: create one as nnU-Net v2 expects, with channel_names, labels, "
            "numTraining and file_ending."
        )
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not valid JSON ({error}): fix the file.") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path} must hold a JSON object.")
    missing = [key for key in ("channel_names", "labels", "file_ending") if key not in meta]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}: add them as nnU-Net v2's dataset.json format describes.")
    channels = meta["channel_names"]
    if not isinstance(channels, dict) or "0" not in channels:
        raise InputError(f"{path}: channel_names must be an object like {{\"0\": \"T1\"}} or {{\"0\": \"CT\"}}.")
    if len(channels) != 1:
        raise InputError(
            f"{path} declares {len(channels)} channels; MultiTaskSeg uses one image per case: keep channel \"0\" only."
        )
    ending = meta["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        raise InputError(f"{path}: file_ending must be a string like \".nii.gz\", not {ending!r}.")
    return meta


def _parse_labels(root: Path, raw) -> Dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"{root / DATASET_JSON}: labels must be an object like {{\"background\": 0, \"liver\": 1}}.")
    labels: Dict[str, int] = {}
    for label_name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(
                f"{root / DATASET_JSON}: label {label_name!r} has value {value!r}; MultiTaskSeg needs one integer per "
                "label (nnU-Net region-based labels are not supported): give each label its own integer."
            )
        labels[label_name] = value
    if 0 not in labels.values():
        raise InputError(f"{root / DATASET_JSON}: labels must include \"background\": 0.")
    if len(set(labels.values())) != len(labels):
        raise InputError(f"{root / DATASET_JSON}: two labels share one value; give each label its own integer.")
    return labels


def _parse_class_map(root: Path, raw, labels: Mapping[str, int]) -> Dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise InputError(f"{root / DATASET_JSON}: multitaskseg.class_map must map dataset label names to class names.")
    stray = [name for name in raw if name not in labels]
    if stray:
        raise InputError(
            f"{root / DATASET_JSON}: class_map names {', '.join(repr(n) for n in stray)}, which are not in 'labels': "
            "use the dataset's label names as keys."
        )
    return dict(raw)


def _find_cases(root: Path, images_dir: str, labels_dir: str, ending: str, labels_required: bool) -> List[Case]:
    image_folder = root / images_dir
    if not image_folder.is_dir():
        if labels_required:
            raise InputError(f"{root} has no {images_dir}/ folder: put the training images there.")
        return []
    label_folder = root / labels_dir
    cases: List[Case] = []
    for path in sorted(image_folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue  # hidden files such as macOS '._' companions
        if not path.name.endswith(ending):
            raise InputError(f"{path} does not end with the dataset's file_ending {ending!r}: convert or remove it.")
        stem = path.name[: -len(ending)]
        match = re.match(r"^(.+)_(\d{4})$", stem)
        if match is None:
            raise InputError(
                f"{path.name} lacks the channel suffix: name images '<case>{CHANNEL_SUFFIX}{ending}' (nnU-Net v2)."
            )
        if match.group(2) != CHANNEL_SUFFIX[1:]:
            raise InputError(
                f"{path.name} is channel {match.group(2)}; MultiTaskSeg uses one channel: keep only '{CHANNEL_SUFFIX}' files."
            )
        case_id = match.group(1)
        label_path: Optional[Path] = label_folder / f"{case_id}{ending}"
        if not label_path.is_file():
            if labels_required:
                raise InputError(f"Training image {path.name} has no labelmap {labels_dir}/{case_id}{ending}: add it.")
            label_path = None
        cases.append(Case(case_id=case_id, image_path=path, label_path=label_path))
    return cases


def _modality(channel_names: Mapping[str, str]) -> str:
    """nnU-Net's rule: a channel called 'CT' is CT (Hounsfield units), anything else is MR-like."""
    return "CT" if str(channel_names["0"]).strip().upper() == "CT" else "MR"


def _resolve_task(root: Path, task, labels: Mapping[str, int], class_map: Mapping[str, str]) -> str:
    if task is not None:
        if not isinstance(task, str) or not task.strip():
            raise InputError(f"{root / DATASET_JSON}: multitaskseg.task must be a task name such as \"brain\".")
        return task.strip()
    names = {class_map.get(n, n).strip().lower() for n, v in labels.items() if v != 0}
    for candidate, class_names in TASK_CLASS_NAMES.items():
        if names and names <= set(class_names):
            return candidate
    raise InputError(
        f"Cannot tell the task of {root.name} from its labels ({', '.join(sorted(names))}): add "
        '"multitaskseg": {"task": "<task>"} to its dataset.json.'
    )
