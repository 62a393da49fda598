"""The labelmap rule of thresholds.py on tiny hand-made probability maps."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from MultiTaskSegLib.engine import labelmap_rule as thresholds_module
from MultiTaskSegLib.engine.errors import InputError
from MultiTaskSegLib.engine.classes import DEFAULT_CLASSES
from MultiTaskSegLib.engine.labelmap_rule import (
    ProbabilityMaps,
    quantize_probabilities,
    threshold_to_level,
)

BG, WM, GM, BGT, CSF, CB, BS, PEC, COR = range(9)


def maps(*voxels):
    """ProbabilityMaps data from per-voxel dicts {class: uint8 value}, laid out along x."""
    data = np.zeros((9, 1, 1, len(voxels)), dtype=np.uint8)
    for x, values in enumerate(voxels):
        for c, v in values.items():
            data[c, 0, 0, x] = v
    return data


def labels(data, selected=None, thresholds=None, defaults=None):
    return ProbabilityMaps(data, DEFAULT_CLASSES, selected, defaults).labelmap(thresholds)[0, 0].tolist()


def reference_labelmap(data, selected, levels):
    """The rule written voxel by voxel, independently of the vectorised implementation."""
    out = np.zeros(data.shape[1:], dtype=np.uint8)
    argmax_classes = [0] + [c.index for c in DEFAULT_CLASSES if c.decision == "argmax"]
    for idx in np.ndindex(*data.shape[1:]):
        p = data[(slice(None),) + idx].astype(int)
        candidates = [c for c in sorted(levels) if p[c] >= levels[c]]
        if candidates:
            out[idx] = max(candidates, key=lambda c: (p[c], -c))
            continue
        winner = max(argmax_classes, key=lambda c: (p[c], -c))
        out[idx] = winner if winner in selected else 0
    return out


def test_quantize_rounds_and_validates():
    p = np.array([0.0, 1.0, 0.5, 127.5 / 255, 0.2, 1.0 + 1e-7, -1e-7], dtype=np.float32)
    assert quantize_probabilities(p).tolist() == [0, 255, 128, 128, 51, 255, 0]
    for bad in ([0.5, np.nan], [1.01], [-0.1]):
        with pytest.raises(InputError):
            quantize_probabilities(np.array(bad))
    with pytest.raises(InputError):
        quantize_probabilities(np.array([1, 0]))


def test_threshold_to_level():
    assert threshold_to_level(128 / 255) == 128
    assert threshold_to_level(0.5) == 128
    assert threshold_to_level(0.0) == 0
    assert threshold_to_level(1.0) == 255
    assert threshold_to_level(np.nextafter(128 / 255, 0)) == 128
    assert threshold_to_level(np.nextafter(128 / 255, 1)) == 129


@given(st.floats(0.0, 1.0))
def test_level_matches_definition(t):
    level = threshold_to_level(t)
    assert level / 255 >= t
    assert level == 0 or (level - 1) / 255 < t


def test_uint8_boundary_value_128():
    data = maps({COR: 128, BG: 200}, {COR: 127, BG: 200})
    assert labels(data, thresholds={COR: 128 / 255}) == [COR, 0]
    assert labels(data, thresholds={COR: 0.5}) == [COR, 0]
    assert labels(data, thresholds={COR: np.nextafter(128 / 255, 1)}) == [0, 0]


def test_argmax_classes_and_ties():
    data = maps({BG: 10, WM: 200, GM: 50}, {WM: 100, GM: 100}, {BG: 90, WM: 90}, {CB: 30, BS: 40})
    assert labels(data) == [WM, WM, 0, BS]  # ties go to the lowest index, background included


def test_unselected_argmax_winner_becomes_background():
    data = maps({WM: 100, GM: 150}, {WM: 150, GM: 100}, {BG: 50, WM: 60})
    assert labels(data, selected=["white matter"]) == [0, WM, WM]
    assert labels(data, selected=[GM]) == [GM, 0, 0]


def test_thresholded_classes_override_and_compete():
    # voxel 0: coronary passes and beats the brain argmax; voxel 1: both pass, higher p wins;
    # voxel 2: equal p, lowest index wins; voxel 3: nothing passes, argmax decides (thresholded
    # classes do not take part even with the highest probability).
    data = maps({WM: 250, COR: 130}, {PEC: 140, COR: 200}, {PEC: 180, COR: 180}, {GM: 20, PEC: 120, COR: 120})
    assert labels(data) == [COR, COR, PEC, GM]
    assert labels(data, thresholds={"pectoral muscle": 0.9, "coronary arteries": 0.9}) == [WM, 0, 0, GM]
    assert labels(data, selected=[PEC], thresholds={COR: 0.1}) == [0, PEC, PEC, 0]
    assert labels(data, thresholds={PEC: 0.0, COR: 0.0}) == [COR, COR, PEC, PEC]


def test_zero_threshold_labels_even_zero_probability():
    data = maps({BG: 255}, {WM: 255})
    assert labels(data, selected=[COR], thresholds={COR: 0.0}) == [COR, COR]


def test_default_thresholds_and_overrides():
    data = maps({COR: 100}, {COR: 160})
    assert labels(data, selected=[COR]) == [0, COR]  # default 0.5
    assert labels(data, selected=[COR], defaults={COR: 0.3}) == [COR, COR]
    assert labels(data, selected=[COR], defaults={COR: 0.3}, thresholds={COR: 0.7}) == [0, 0]
    assert ProbabilityMaps(data, DEFAULT_CLASSES).default_thresholds == {PEC: 0.5, COR: 0.5}


@pytest.mark.parametrize("bad", [-0.01, 1.5, float("nan"), "high", None])
def test_invalid_threshold_raises(bad):
    pm = ProbabilityMaps(maps({COR: 1}), DEFAULT_CLASSES)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        pm.labelmap({COR: bad})


def test_threshold_for_argmax_class_or_unknown_class_raises():
    pm = ProbabilityMaps(maps({COR: 1}), DEFAULT_CLASSES)
    with pytest.raises(InputError, match="argmax"):
        pm.labelmap({"white matter": 0.5})
    with pytest.raises(InputError, match="'white matter'"):  # lists the valid names
        pm.labelmap({"liver": 0.5})
    with pytest.raises(InputError, match="Background"):
        ProbabilityMaps(maps({COR: 1}), DEFAULT_CLASSES, selected=[0])
    with pytest.raises(InputError):
        ProbabilityMaps(maps({COR: 1}), DEFAULT_CLASSES, default_thresholds={COR: 2.0})


def test_bad_data_raises():
    with pytest.raises(InputError, match="uint8"):
        ProbabilityMaps(np.zeros((9, 2, 2, 2), np.float32), DEFAULT_CLASSES)
    with pytest.raises(InputError, match="channels"):
        ProbabilityMaps(np.zeros((8, 2, 2, 2), np.uint8), DEFAULT_CLASSES)


def test_accessors():
    data = maps({COR: 255, WM: 51})
    pm = ProbabilityMaps(data, DEFAULT_CLASSES, selected=["coronary arteries", WM, WM])
    assert pm.selected == (WM, COR)
    assert pm.shape == (1, 1, 1)
    assert pm.thresholded_classes() == [COR]
    assert pm.resolve_class("brain stem") == BS
    assert pm.probability("white matter").dtype == np.float32
    assert pm.probability(WM)[0, 0, 0] == pytest.approx(0.2)
    assert pm.channel(COR)[0, 0, 0] == 255


def test_threshold_change_reuses_cached_argmax(monkeypatch):
    rng = np.random.default_rng(1)
    pm = ProbabilityMaps(rng.integers(0, 256, (9, 3, 4, 5), dtype=np.uint8), DEFAULT_CLASSES)
    first = pm.labelmap({COR: 0.2})
    calls = []
    monkeypatch.setattr(pm, "_compute_argmax_labels", lambda: calls.append(1))
    second = pm.labelmap({COR: 0.9})
    assert calls == [] and not np.array_equal(first, second)
    second[:] = 0  # the caller owns the result: the cache must not change
    assert np.array_equal(pm.labelmap({COR: 0.2}), first)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    selected=st.sets(st.integers(1, 8), min_size=1),
    t_pec=st.floats(0, 1),
    t_cor=st.floats(0, 1),
    slab=st.sampled_from([1, 7, 1 << 21]),
)
def test_vectorised_rule_equals_voxelwise_rule(seed, selected, t_pec, t_cor, slab):
    rng = np.random.default_rng(seed)
    # few distinct values so ties are frequent
    data = (rng.integers(0, 6, (9, 3, 4, 5)) * 51).astype(np.uint8)
    original = thresholds_module._SLAB_VOXELS
    thresholds_module._SLAB_VOXELS = slab  # exercise several slabs on small data
    try:
        got = ProbabilityMaps(data, DEFAULT_CLASSES, sorted(selected)).labelmap({PEC: t_pec, COR: t_cor})
    finally:
        thresholds_module._SLAB_VOXELS = original
    levels = {c: threshold_to_level(t) for c, t in ((PEC, t_pec), (COR, t_cor)) if c in selected}
    assert np.array_equal(got, reference_labelmap(data, selected, levels))


def test_background_outside_sets_background_certain_and_keeps_inside_untouched():
    from MultiTaskSegLib.engine.labelmap_rule import background_outside

    rng = np.random.default_rng(0)
    probabilities = rng.integers(0, 256, (4, 3, 5, 6), dtype=np.uint8)
    inside = rng.random((3, 5, 6)) > 0.5
    expected = probabilities.copy()
    expected[:, ~inside] = 0
    expected[0, ~inside] = 255
    assert background_outside(probabilities, inside) is probabilities
    np.testing.assert_array_equal(probabilities, expected)
