"""Model bundles: the safetensors round trip, and every way a bad file must be refused.

A refused file must be refused *before* anything in it runs: the pickle tests use an object
whose unpickling would create a marker file, and check that the file never appears.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from MultiTaskSegLib.engine.bundle import (
    METADATA_KEY,
    bundle_from_metadata,
    load_bundle,
    make_random_bundle,
    new_bundle,
    read_metadata,
)
from MultiTaskSegLib.engine.errors import InputError, ModelError
from MultiTaskSegLib.engine.network import Architecture, parameter_count
from MultiTaskSegLib.engine.classes import DEFAULT_CLASSES


def _weights(bundle):
    return {k: v for k, v in bundle.model.state_dict().items() if not k.endswith("num_batches_tracked")}


def _write(path, metadata, tensors):
    """A safetensors file with arbitrary (possibly inconsistent) bundle metadata and tensors."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={METADATA_KEY: json.dumps(metadata)})
    return path


def _random_planes(seed, batch=3, size=51):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, 1, size, size, generator=generator) * 2 for _ in range(3)]


@pytest.fixture(scope="module")
def bundle_and_file(tmp_path_factory):
    bundle = make_random_bundle(seed=7)
    path = bundle.save(tmp_path_factory.mktemp("bundle") / "model.safetensors")
    return bundle, path


# ---- the round trip ------------------------------------------------------------------------


def test_round_trip_keeps_metadata_weights_and_outputs(bundle_and_file):
    original, path = bundle_and_file
    loaded = load_bundle(path)
    assert loaded.metadata == original.metadata
    assert loaded.path == path
    assert loaded.classes == original.classes and loaded.tasks == original.tasks
    assert loaded.default_thresholds == original.default_thresholds == {7: 0.5, 8: 0.5}
    before, after = _weights(original), _weights(loaded)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert not loaded.model.training  # loaded for inference
    planes = _random_planes(0)
    original.model.eval()
    with torch.no_grad():
        expected, actual = original.model(*planes), loaded.model(*planes)
    assert expected.shape == (3, len(DEFAULT_CLASSES), 1, 1)
    assert torch.equal(expected, actual)
    assert expected.std() > 0.1  # a random bundle's outputs vary, so equality means something


def test_read_metadata_needs_no_weights_and_gives_the_parameter_count(bundle_and_file):
    original, path = bundle_and_file
    metadata = read_metadata(path)
    assert metadata == original.metadata
    rebuilt = bundle_from_metadata(metadata)  # no weights: architecture and classes only
    assert parameter_count(rebuilt.model) == parameter_count(original.model)


def test_save_refuses_to_overwrite_unless_asked(bundle_and_file, tmp_path):
    original, _ = bundle_and_file
    path = original.save(tmp_path / "a.safetensors")
    with pytest.raises(ModelError, match="exists"):
        original.save(path)
    original.save(path, overwrite=True)
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic save leaves no temporary file


# ---- unsafe and damaged files ----------------------------------------------------------------


class _RunsCodeWhenUnpickled:
    """Unpickling this calls open(marker, "w"), i.e. creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "torch.save legacy", "pickle"])
def test_pickle_checkpoints_are_refused_without_unpickling(tmp_path, writer):
    marker = tmp_path / "code-ran"
    payload = {"state_dict": {"w": torch.zeros(2)}, "evil": _RunsCodeWhenUnpickled(marker)}
    path = tmp_path / "model.safetensors"  # the suffix is not trusted
    if writer == "torch.save":
        torch.save(payload, path)
    elif writer == "torch.save legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    for load in (load_bundle, read_metadata):
        with pytest.raises(ModelError, match="pickle"):
            load(path)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 5, 100, -1000])
def test_truncated_files_are_refused(bundle_and_file, tmp_path, keep):
    _, path = bundle_and_file
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(ModelError, match="truncated|corrupt|too short"):
        load_bundle(truncated)


def test_corrupt_header_is_refused(bundle_and_file, tmp_path):
    _, path = bundle_and_file
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json at!"
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt"):
        load_bundle(corrupt)
    data = bytearray(path.read_bytes())
    data[0:8] = (10 ** 12).to_bytes(8, "little")  # a header larger than the file
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="header size"):
        load_bundle(corrupt)


def test_safetensors_without_bundle_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(ModelError, match="not a MultiTaskSeg bundle"):
        load_bundle(path)


def test_missing_model_file_says_so(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_bundle(tmp_path / "nowhere.safetensors")


def test_weights_of_another_number_of_classes_are_refused(bundle_and_file, tmp_path):
    original, _ = bundle_and_file
    smaller = new_bundle(classes=DEFAULT_CLASSES[:7], tasks=original.tasks[:1], seed=0)
    path = _write(tmp_path / "mismatch.safetensors", original.metadata, _weights(smaller))
    with pytest.raises(ModelError, match="do not match"):
        load_bundle(path)


def test_missing_tensor_is_refused(bundle_and_file, tmp_path):
    original, _ = bundle_and_file
    weights = _weights(original)
    dropped = sorted(weights)[3]
    del weights[dropped]
    path = _write(tmp_path / "missing.safetensors", original.metadata, weights)
    with pytest.raises(ModelError, match="missing") as info:
        load_bundle(path)
    assert dropped in str(info.value)


# The metadata checks below call the validation load_bundle runs (bundle_from_metadata) directly;
# the file-level path through load_bundle is covered by the tests above.


def test_architecture_and_class_list_must_agree(bundle_and_file):
    original, _ = bundle_and_file
    metadata = original.metadata
    metadata["architecture"]["num_classes"] = 8
    weights = _weights(new_bundle(arch=Architecture(num_classes=8), seed=0))
    with pytest.raises(ModelError, match="9 classes"):
        bundle_from_metadata(metadata, weights)


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_default_thresholds_outside_0_1_are_refused(bundle_and_file, value):
    original, _ = bundle_and_file
    metadata = original.metadata
    metadata["thresholds"]["pectoral muscle"] = value
    with pytest.raises(ModelError, match=r"outside \[0, 1\]"):
        bundle_from_metadata(metadata, _weights(original))


def test_default_threshold_of_unknown_class_is_refused(bundle_and_file):
    original, _ = bundle_and_file
    metadata = original.metadata
    metadata["thresholds"]["liver"] = 0.5
    with pytest.raises(ModelError, match="unknown class 'liver'"):
        bundle_from_metadata(metadata, _weights(original))


def test_task_naming_an_unknown_class_is_refused(bundle_and_file):
    original, _ = bundle_and_file
    metadata = original.metadata
    metadata["tasks"][1]["classes"] = ["pectoralis"]
    with pytest.raises(ModelError, match="pectoralis"):
        bundle_from_metadata(metadata, _weights(original))


def test_valid_bundle_is_not_mistaken_for_a_pickle_whatever_its_header_size(tmp_path):
    bundle = make_random_bundle(seed=0)
    for padding in range(256):  # find a metadata length whose header size starts with byte 0x80
        bundle.provenance["padding"] = "x" * padding
        path = bundle.save(tmp_path / "model.safetensors", overwrite=True)
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert load_bundle(path).metadata == bundle.metadata


def test_class_names_resolve_case_insensitively_and_unknown_names_list_the_valid_ones(bundle_and_file):
    original, _ = bundle_and_file
    assert original.class_index("White Matter") == 1
    assert original.class_index(" coronary arteries ") == 8
    assert original.class_index(7) == 7
    with pytest.raises(InputError, match="no class 'liver'.*'pectoral muscle'"):
        original.class_index("liver")
    with pytest.raises(InputError):
        original.class_index(9)
