"""Reliability, round 2 (issue 16): random mutations of a valid bundle's metadata and of image
headers reach the loaders, and only the project's own errors come out, each case within a
time limit (hypothesis' deadline): no TypeError from a field of the wrong type, no RecursionError,
no C++ abort or hang in ITK.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from MultiTaskSegLib.engine.bundle import METADATA_KEY, make_random_bundle, read_metadata
from MultiTaskSegLib.engine.bundle_schema import validate_metadata
from MultiTaskSegLib.engine.errors import InputError, ModelError
from MultiTaskSegLib.engine.image_reading import read_volume

# Generous: the limit catches hangs and runaway work, not a slow shared machine.
DEADLINE = timedelta(seconds=10)
PROPERTY = settings(max_examples=40, deadline=DEADLINE, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)

VALID_METADATA = make_random_bundle(seed=0, n_layers=2).metadata

_TRICKY_TEXT = st.sampled_from(["", " ", "..", "../../x", "a/b", "a\\b", "\0", "\n", "|", "~", "^", "\udcff",
                                "MR", "CT", "argmax", "threshold", "background", "white matter", "brain",
                                "triplanar-cnn", "window", "percentile", "tissue-mode", "x" * 300])
_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.integers(-3, 300),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), _TRICKY_TEXT)
_JSON = st.recursive(_LEAVES, lambda children: st.lists(children, max_size=4)
                     | st.dictionaries(st.text(max_size=8) | _TRICKY_TEXT, children, max_size=4), max_leaves=12)


def _mutate(value, data, depth: int = 0):
    """Walk down a random path of ``value`` and replace, delete or add something there."""
    containers = isinstance(value, (dict, list)) and len(value) > 0
    action = data.draw(st.sampled_from(["descend", "descend", "replace", "delete", "add"]
                                       if containers else ["replace"]))
    if action == "replace":
        return data.draw(_JSON)
    if isinstance(value, dict):
        key = data.draw(st.sampled_from(sorted(value, key=str)))
        if action == "delete":
            del value[key]
        elif action == "add":
            value[data.draw(st.text(max_size=8) | _TRICKY_TEXT)] = data.draw(_JSON)
        else:
            value[key] = _mutate(value[key], data, depth + 1)
    else:
        index = data.draw(st.integers(0, len(value) - 1))
        if action == "delete":
            del value[index]
        elif action == "add":
            value.insert(index, data.draw(_JSON))
        else:
            value[index] = _mutate(value[index], data, depth + 1)
    return value


def _bundle_file(folder: str, raw_metadata: str) -> Path:
    path = Path(folder) / "model.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={METADATA_KEY: raw_metadata})
    return path


@PROPERTY
@given(data=st.data())
def test_mutated_metadata_gives_only_model_errors(data):
    metadata = copy.deepcopy(VALID_METADATA)
    for _ in range(data.draw(st.integers(1, 3))):
        metadata = _mutate(metadata, data)
    try:
        validate_metadata(metadata, "mutated")
    except ModelError:
        pass
    try:
        raw = json.dumps(metadata)
    except (ValueError, TypeError):
        return  # not JSON at all (a lone surrogate key): no file can hold it
    with tempfile.TemporaryDirectory() as folder:
        try:
            read_metadata(_bundle_file(folder, raw))
        except ModelError:
            pass


@PROPERTY
@given(cut=st.integers(0, 5000), insert=st.text(max_size=6), nest=st.integers(0, 3000))
def test_damaged_metadata_text_gives_only_model_errors(cut, insert, nest):
    raw = json.dumps(VALID_METADATA)
    cut = min(cut, len(raw))
    damaged = raw[:cut] + insert + "[" * nest + raw[cut + 1:]
    with tempfile.TemporaryDirectory() as folder:
        try:
            read_metadata(_bundle_file(folder, damaged))
        except ModelError:
            pass


# ---- image headers -----------------------------------------------------------------------------------


_NRRD_FIELDS = ("type", "dimension", "sizes", "space directions", "space origin", "encoding", "endian",
                "data file", "kinds", "spacings", "space", "byte skip", "line skip")
_NRRD_TOKENS = st.sampled_from(["0", "-1", "1", "2", "3", "4", "nan", "inf", "-inf", "1e308", "1e-308", "99999999999",
                                "", "x", "(1,0,0)", "(nan,0,0)", "(inf,1,0)", "none", "(0,0,0)", "LIST",
                                "%d 1 3 1", "/dev/null", "/dev/zero", "../x", "4294967296", "2147483648", "3.5",
                                "(1,2)", "raw", "gzip", "ascii", "hex", "big", "little", "float", "double", "uchar",
                                "int64", "block", "RAS", "left-posterior-superior", "é"])
_NRRD_VALID = {"type": "short", "dimension": "3", "space": "left-posterior-superior", "sizes": "5 4 3",
               "encoding": "raw", "endian": "little", "space directions": "(1,0,0) (0,1,0) (0,0,1)",
               "space origin": "(0,0,0)"}
_VOXELS = (np.arange(60, dtype=np.int16) % 9 + 1).tobytes()


@PROPERTY
@given(changes=st.lists(st.tuples(st.sampled_from(_NRRD_FIELDS), st.lists(_NRRD_TOKENS, min_size=0, max_size=3)),
                        min_size=1, max_size=3),
       detached=st.booleans())
def test_mutated_nrrd_headers_give_only_input_errors(changes, detached):
    fields = dict(_NRRD_VALID)
    for field, tokens in changes:
        fields[field] = " ".join(tokens)
    header = "NRRD0004\n" + "".join(f"{key}: {value}\n" for key, value in fields.items())
    with tempfile.TemporaryDirectory() as folder:
        if detached:
            if "data file" not in fields:
                header += "data file: image.raw\n"
            (Path(folder) / "image.raw").write_bytes(_VOXELS)
            path = Path(folder) / "image.nhdr"
            path.write_bytes(header.encode())
        else:
            path = Path(folder) / "image.nrrd"
            path.write_bytes(header.encode() + b"\n" + _VOXELS)
        try:
            read_volume(path)
        except InputError:
            pass


def _nifti_fields():
    """(byte offset, type) of the NIfTI-1 header fields that say what and where the voxels are."""
    return ([(40 + 2 * i, "<i2") for i in range(8)] + [(70, "<i2"), (72, "<i2")]
            + [(76 + 4 * i, "<f4") for i in range(8)] + [(108, "<f4"), (112, "<f4"), (116, "<f4"),
                                                        (252, "<i2"), (254, "<i2")]
            + [(256 + 4 * i, "<f4") for i in range(18)] + [(0, "<i4")])


_NIFTI_VALUES = {"<i2": st.sampled_from([0, -1, 1, 2, 3, 4, 7, 8, 16, 64, 256, 1024, 2048, 32767, -32768, 1792]),
                 "<f4": st.sampled_from([0.0, -1.0, 1.0, float("nan"), float("inf"), -float("inf"), 1e38, -1e38,
                                         1e-38, 352.0, 0.5]),
                 "<i4": st.sampled_from([348, 0, -1, 540, 1 << 30])}


@pytest.fixture(scope="module")
def nifti_header():
    with tempfile.TemporaryDirectory() as folder:
        image = sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5) % 9 + 1)
        image.SetSpacing((0.8, 0.9, 2.0))
        sitk.WriteImage(image, os.path.join(folder, "base.nii"))
        return Path(folder, "base.nii").read_bytes()


@PROPERTY
@given(data=st.data(), compressed=st.booleans())
def test_mutated_nifti_headers_give_only_input_errors(nifti_header, data, compressed):
    content = bytearray(nifti_header)
    for _ in range(data.draw(st.integers(1, 3))):
        offset, kind = data.draw(st.sampled_from(_nifti_fields()))
        value = data.draw(_NIFTI_VALUES[kind])
        content[offset:offset + np.dtype(kind).itemsize] = np.array([value], kind).tobytes()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("image.nii.gz" if compressed else "image.nii")
        if compressed:
            import gzip
            path.write_bytes(gzip.compress(bytes(content)))
        else:
            path.write_bytes(bytes(content))
        try:
            read_volume(path)
        except InputError:
            pass
