"""Reliability, round 2 (issue 16): a model file is checked against the metadata schema and its
weights are checked before anything is built or segmented; every violation is a ModelError.

Class 9 of the issue (and 3: class names as file names; 14: '|' in a terminology field); the
property test feeding random mutations to the loaders is in test_reliability_properties.py.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from MultiTaskSegLib.engine.bundle import METADATA_KEY, bundle_from_metadata, load_bundle, make_random_bundle
from MultiTaskSegLib.engine.bundle_schema import parameter_count_of
from MultiTaskSegLib.engine.errors import ModelError
from MultiTaskSegLib.engine.network import Architecture, TriplanarCNN, parameter_count

from support import assert_one_error_line, run


@pytest.fixture(scope="module")
def original():
    return make_random_bundle(seed=3, n_layers=2)


def weights(bundle):
    return {k: v.clone() for k, v in bundle.model.state_dict().items() if not k.endswith("num_batches_tracked")}


def write(path, metadata, tensors=None):
    """A safetensors file with any metadata (a string is stored as it is) and tensors."""
    raw = metadata if isinstance(metadata, str) else json.dumps(metadata)
    save_file({k: v.contiguous() for k, v in (tensors or {"x": torch.zeros(1)}).items()}, str(path),
              metadata={METADATA_KEY: raw})
    return path


# ---- weights ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, original, value):
    tensors = weights(original)
    tensors["head.8.weight"][0, 0] = value
    path = write(tmp_path / "model.safetensors", original.metadata, tensors)
    with pytest.raises(ModelError, match="head.8.weight.*NaN or infinite"):
        load_bundle(path)


def test_integer_weights_are_refused(tmp_path, original):
    tensors = weights(original)
    tensors["head.8.bias"] = tensors["head.8.bias"].round().to(torch.int32)
    with pytest.raises(ModelError, match="head.8.bias.*int32, not floating point"):
        load_bundle(write(tmp_path / "model.safetensors", original.metadata, tensors))


def test_negative_batch_norm_variances_are_refused(original):
    tensors = weights(original)
    tensors["conv_stack.1.running_var"][0] = -1.0
    with pytest.raises(ModelError, match="negative"):
        bundle_from_metadata(original.metadata, tensors)


# ---- classes, tasks, thresholds ----------------------------------------------------------------------


def metadata_with(original, change):
    metadata = copy.deepcopy(original.metadata)
    change(metadata)
    return metadata


def _many_classes(metadata, count=300):
    template = metadata["classes"][1]
    metadata["classes"] = metadata["classes"][:1] + [
        dict(template, index=i, name=f"class {i}", task="brain") for i in range(1, count)]
    metadata["architecture"]["num_classes"] = count
    metadata["tasks"] = [dict(metadata["tasks"][0], classes=[f"class {i}" for i in range(1, count)])]
    metadata["thresholds"] = {}


def _only_background(metadata):
    metadata["classes"] = metadata["classes"][:1]
    metadata["architecture"]["num_classes"] = 1


def _rename(index, name):
    def change(metadata):
        old = metadata["classes"][index]["name"]
        metadata["classes"][index]["name"] = name
        for task in metadata["tasks"]:
            task["classes"] = [name if c == old else c for c in task["classes"]]
        if old in metadata["thresholds"]:
            metadata["thresholds"][name] = metadata["thresholds"].pop(old)
    return change


@pytest.mark.parametrize("change, message", [
    (_many_classes, "num_classes must be an integer in 2..255"),
    (_only_background, "num_classes must be an integer in 2..255"),
    (_rename(2, "White Matter"), "unique"),
    (_rename(2, "../../escaped"), "without '/'"),
    (_rename(2, "grey\0matter"), "control characters"),
    (_rename(2, "grey\nmatter"), "control characters"),
    (_rename(2, "grey\udcffmatter"), "invalid UTF-8"),
    (lambda m: m["thresholds"].update({"white matter": 0.5}), "decided by the highest probability"),
    (lambda m: m["thresholds"].update({"pectoral muscle": "0.5"}), "thresholds.pectoral muscle must be a number"),
    (lambda m: m["thresholds"].update({"pectoral muscle": float("nan")}), "must be a number"),
    (lambda m: m["classes"][7]["terminology"]["type"].__setitem__(2, "Pectoralis|major"), r"'\|'"),
    (lambda m: m["classes"][1].__setitem__("color", [0.5, float("nan"), 0.1]), "color"),
    (lambda m: m["classes"][1].__setitem__("index", "1"), "index"),
    (lambda m: m["tasks"].append(dict(m["tasks"][0])), "distinct names"),
    (lambda m: m.__setitem__("tasks", "brain"), "tasks must be a non-empty list"),
    (lambda m: m.__setitem__("classes", None), "classes must be a non-empty list"),
    (lambda m: m["architecture"].__setitem__("n_layers", 1_000_000), "n_layers must be an integer in 1..100"),
    (lambda m: m["architecture"].__setitem__("n_layers", 2.5), "n_layers must be an integer"),
    (lambda m: m["architecture"].__setitem__("n_filters", True), "n_filters must be an integer"),
    (lambda m: m["architecture"].update(n_layers=100, n_filters=512, patch_size=201), "parameters"),
    (lambda m: m["architecture"].__setitem__("dropout", 1.5), "dropout"),
    (lambda m: m.__setitem__("target_spacing_mm", -1), "target_spacing_mm"),
    (lambda m: m.__setitem__("provenance", [1, 2]), "provenance must be a JSON object"),
    (lambda m: m["normalization"]["CT"].__setitem__("scale", 0.0), "NaN or infinite"),
    (lambda m: m["normalization"]["MR"].__setitem__("method", "magic"), "cannot be applied"),
    (lambda m: m["normalization"]["CT"].pop("low"), "cannot be applied"),
    (lambda m: m["normalization"]["CT"].__setitem__("high", [99]), "finite number, a string"),
    (lambda m: m["normalization"].pop("CT"), "without a normalisation rule"),
])
def test_metadata_outside_the_schema_is_refused_before_anything_is_built(original, monkeypatch, change, message):
    monkeypatch.setattr(TriplanarCNN, "__init__", lambda *a, **k: pytest.fail("a network was built"))
    with pytest.raises(ModelError, match=message):
        bundle_from_metadata(metadata_with(original, change), None)


def test_the_schema_accepts_what_the_engine_writes(original):
    assert bundle_from_metadata(copy.deepcopy(original.metadata), weights(original)).metadata == original.metadata


def test_the_computed_parameter_count_is_the_built_networks():
    for arch in (Architecture(), Architecture(num_classes=4, n_layers=3, n_filters=5, n_hidden=7)):
        assert parameter_count_of(arch) == parameter_count(TriplanarCNN(arch))


# ---- hostile files ---------------------------------------------------------------------------------


def test_deeply_nested_metadata_is_refused_without_a_recursion_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ModelError, match="nested more than"):
        load_bundle(write(tmp_path / "deep.safetensors", deep))


def test_info_on_a_model_announcing_a_million_layers_is_a_one_line_error(capsys, tmp_path, original, monkeypatch):
    monkeypatch.setattr(TriplanarCNN, "__init__", lambda *a, **k: pytest.fail("info built the network"))
    metadata = metadata_with(original, lambda m: m["architecture"].update(n_layers=1_000_000))
    code, _, err = run(capsys, "info", write(tmp_path / "huge.safetensors", metadata))
    assert code == 2
    assert_one_error_line(err, "n_layers must be an integer in 1..100")


def test_a_class_named_with_a_path_is_refused_by_the_command(capsys, tmp_path, original, image_files):
    metadata = metadata_with(original, _rename(7, "../../../x"))
    path = write(tmp_path / "evil.safetensors", metadata, weights(original))
    code, _, err = run(capsys, "segment", image_files[0], "-o", tmp_path / "out.nii.gz", "--model", path,
                       "--probabilities", tmp_path / "probs")
    assert code == 2
    assert_one_error_line(err, "'../../../x'")
    assert not (tmp_path / "probs").exists() and not (tmp_path / "out.nii.gz").exists()
