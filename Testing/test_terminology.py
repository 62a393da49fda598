"""Default classes and tasks, JSON round trip and validation, Slicer terminology strings."""

import json

import pytest

from MultiTaskSegLib.engine.errors import ModelError
from MultiTaskSegLib.engine.classes import (
    ANATOMIC_CONTEXT,
    DEFAULT_CLASSES,
    DEFAULT_TASKS,
    SEGMENTATION_CONTEXT,
    ClassInfo,
    TaskInfo,
    classes_of_task,
    validate_class_set,
)

PAPER_ORDER = [
    "background", "white matter", "cortical grey matter", "basal ganglia and thalami",
    "ventricular cerebrospinal fluid", "cerebellum", "brain stem", "pectoral muscle", "coronary arteries",
]


def test_default_classes_follow_the_paper():
    assert [c.name for c in DEFAULT_CLASSES] == PAPER_ORDER
    assert [c.index for c in DEFAULT_CLASSES] == list(range(9))
    assert [c.task for c in DEFAULT_CLASSES] == [None] + ["brain"] * 6 + ["breast", "coronary"]
    assert [c.decision for c in DEFAULT_CLASSES] == [None] + ["argmax"] * 6 + ["threshold"] * 2
    validate_class_set(DEFAULT_CLASSES, DEFAULT_TASKS)


def test_default_tasks():
    by_name = {t.name: t for t in DEFAULT_TASKS}
    assert [by_name[n].modality for n in ("brain", "breast", "coronary")] == ["MR", "MR", "CT"]
    assert by_name["brain"].classes == tuple(PAPER_ORDER[1:7])
    assert [c.name for c in classes_of_task(DEFAULT_CLASSES, "coronary")] == ["coronary arteries"]


def test_codes_are_the_standard_ones():
    codes = {c.name: c.terminology["type"][:2] for c in DEFAULT_CLASSES[1:]}
    assert codes["white matter"] == ("SCT", "68523003")
    assert codes["coronary arteries"] == ("SCT", "41801008")
    assert codes["pectoral muscle"] == ("SCT", "60005003")
    assert codes["brain stem"] == ("SCT", "119238007")
    assert all(c.terminology["category"] == ("SCT", "123037004", "Anatomical Structure") for c in DEFAULT_CLASSES[1:])
    colors = {c.color for c in DEFAULT_CLASSES[1:]}
    assert len(colors) == 8  # every segment distinguishable
    assert DEFAULT_CLASSES[4].color == pytest.approx((88 / 255, 106 / 255, 215 / 255))


def test_terminology_string_format():
    s = DEFAULT_CLASSES[8].slicer_terminology_string()
    assert s == (
        f"{SEGMENTATION_CONTEXT}~SCT^123037004^Anatomical Structure~SCT^41801008^Coronary artery"
        f"~SCT^51440002^Right and left~{ANATOMIC_CONTEXT}~^^~^^"
    )
    assert DEFAULT_CLASSES[1].slicer_terminology_string().split("~")[3] == "^^"  # no modifier
    assert DEFAULT_CLASSES[0].slicer_terminology_string() == ""
    with_region = ClassInfo(1, "x", (0, 0, 0), "t", "argmax", {
        "category": ["SCT", "1", "c"], "type": ["SCT", "2", "t"],
        "anatomic_region": ["SCT", "3", "r"], "anatomic_region_modifier": ["SCT", "4", "m"]})
    assert with_region.slicer_terminology_string().split("~")[4:] == [ANATOMIC_CONTEXT, "SCT^3^r", "SCT^4^m"]


def test_slicer_parses_every_terminology_string():
    slicer = pytest.importorskip("slicer")
    logic = slicer.vtkSlicerTerminologiesModuleLogic
    for info in DEFAULT_CLASSES[1:]:
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(info.slicer_terminology_string(), entry)
        assert entry.GetTerminologyContextName() == SEGMENTATION_CONTEXT
        assert entry.GetTypeObject().GetCodeValue() == info.terminology["type"][1]
        assert entry.GetTypeObject().GetCodeMeaning() == info.terminology["type"][2]
        assert logic.SerializeTerminologyEntry(entry) == info.slicer_terminology_string()


def test_json_round_trip():
    blob = json.loads(json.dumps([c.to_json() for c in DEFAULT_CLASSES]))
    assert tuple(ClassInfo.from_json(d) for d in blob) == DEFAULT_CLASSES
    tasks = json.loads(json.dumps([t.to_json() for t in DEFAULT_TASKS]))
    assert tuple(TaskInfo.from_json(d) for d in tasks) == DEFAULT_TASKS


@pytest.mark.parametrize(
    "change, message",
    [
        ({"color": [1, 2, 3]}, "color"),
        ({"decision": "vote"}, "decision"),
        ({"task": None}, "task"),
        ({"terminology": {"type": ["SCT", "1", "x"]}}, "category"),
        ({"terminology": {"category": ["SCT", "1"], "type": ["SCT", "1", "x"]}}, "three"),
        ({"terminology": {"category": ["SCT", "1", "a~b"], "type": ["SCT", "1", "x"]}}, "separators"),
        ({"terminology": {"category": ["SCT", "1", "a"], "type": ["SCT", "1", "x"], "colour": []}}, "unknown"),
        ({"index": -1}, "index"),
    ],
)
def test_from_json_rejects_bad_classes(change, message):
    d = dict(DEFAULT_CLASSES[1].to_json(), **change)
    with pytest.raises(ModelError, match=message):
        ClassInfo.from_json(d)


def test_from_json_rejects_missing_fields_and_bad_background():
    with pytest.raises(ModelError, match="lacks"):
        ClassInfo.from_json({"index": 1, "name": "x"})
    with pytest.raises(ModelError, match="background"):
        ClassInfo.from_json(dict(DEFAULT_CLASSES[0].to_json(), task="brain"))
    with pytest.raises(ModelError, match="modality"):
        TaskInfo.from_json(dict(DEFAULT_TASKS[0].to_json(), modality="PET"))


def test_validate_class_set_catches_order_names_and_tasks():
    with pytest.raises(ModelError, match="position"):
        validate_class_set(DEFAULT_CLASSES[:1] + DEFAULT_CLASSES[2:])
    renamed = DEFAULT_CLASSES[:2] + (ClassInfo(2, "white matter", (0, 0, 0), "brain", "argmax", DEFAULT_CLASSES[2].terminology),)
    with pytest.raises(ModelError, match="unique"):
        validate_class_set(renamed)
    with pytest.raises(ModelError, match="not among"):
        validate_class_set(DEFAULT_CLASSES, DEFAULT_TASKS[:2])
