"""Held-out cases built in memory: labels mapped to the bundle's class indices by name, and the
image prepared as training prepares it (the bundle's normalisation, samples = raw intensity > 0)."""

import dataclasses

import numpy as np

from MultiTaskSegLib.data.held_out_cases import brain_labels_to_bundle, phantom_case
from MultiTaskSegLib.engine.classes import DEFAULT_CLASSES, DEFAULT_TASKS
from MultiTaskSegLib.engine.bundle import new_bundle
from MultiTaskSegLib.engine.network import Architecture


def bundle_of(tasks):
    classes = [c for c in DEFAULT_CLASSES if c.task is None or c.task in tasks]
    classes = [dataclasses.replace(c, index=i) for i, c in enumerate(classes)]
    return new_bundle(classes, [t for t in DEFAULT_TASKS if t.name in tasks],
                      arch=Architecture(len(classes), n_layers=2))


def test_brain_labels_follow_the_bundle_class_names():
    bundle = bundle_of({"brain", "breast"})
    assert brain_labels_to_bundle(np.arange(7, dtype=np.uint8), bundle).tolist() == list(range(7))


def test_a_phantom_case_maps_its_label_to_the_bundle_class_and_is_normalised():
    bundle = bundle_of({"breast", "coronary"})  # no brain: pectoral muscle is class 1 here
    case = phantom_case(bundle, "breast", 1000)
    assert set(np.unique(case.labels)) == {0, bundle.class_index("pectoral muscle")}
    assert case.mask.shape == case.image.shape == case.labels.shape
    assert case.image.dtype == np.float32 and 0.5 < np.percentile(case.image[case.mask], 90) < 1.5
