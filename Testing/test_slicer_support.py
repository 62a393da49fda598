"""The Slicer side's plain-Python pieces: dependency checks, the worker protocol, what the panel shows."""

from __future__ import annotations

import sys

import pytest

from MultiTaskSegLib.engine.classes import DEFAULT_CLASSES, DEFAULT_TASKS
from MultiTaskSegLib.slicer import dependencies, panel_support, worker_protocol
from MultiTaskSegLib.slicer.runs import ModelDescription
from MultiTaskSegLib.slicer.worker_client import describe_exit, error_from_event, WorkerError

# ---- dependencies ---------------------------------------------------------------------------------


def test_versions_compare_by_their_numbers():
    assert dependencies.version_tuple("2.13.0+cpu") == (2, 13, 0)
    assert dependencies.version_tuple("2.5.0rc1") > dependencies.version_tuple("2.4.1")
    assert dependencies.version_tuple("2.10") > dependencies.version_tuple(dependencies.TORCH_MINIMUM_VERSION)


def test_a_too_old_torch_is_missing_with_a_message(monkeypatch):
    real = dependencies.installed_version
    monkeypatch.setattr(dependencies, "installed_version", lambda name: "2.1.2" if name == "torch" else real(name))
    assert dependencies.missing_packages() == ["torch"]
    assert dependencies.describe_problems() == "torch 2.1.2 is too old: 2.5 or newer is needed."


def test_pip_never_promises_cuda_where_pypi_has_none():
    windows = dependencies.torch_build_promise("win32", extension_present=False, nvidia_gpu=True)
    assert "CPU build" in windows and "Windows is CPU-only" in windows and "PyTorch extension" in windows
    assert "CPU build" in dependencies.torch_build_promise("darwin", extension_present=False, nvidia_gpu=False)
    assert "CUDA" in dependencies.torch_build_promise("linux", extension_present=False, nvidia_gpu=True)
    assert "matching your NVIDIA driver" in dependencies.torch_build_promise("win32", extension_present=True,
                                                                              nvidia_gpu=True)


def test_reinstall_goes_through_the_pytorch_extension_when_present_else_pip():
    calls = []

    class Extension:
        def uninstallTorch(self):
            calls.append("uninstall")

        def installTorch(self, askConfirmation, torchVersionRequirement):
            calls.append(("install", askConfirmation, torchVersionRequirement))

    dependencies.install_torch(torch_installer=Extension(), reinstall=True)
    assert calls == ["uninstall", ("install", False, ">=2.5")]
    pip = []
    dependencies.install_torch(pip_install=pip.append, reinstall=True)  # no PyTorchUtils module here
    assert pip == ["--force-reinstall torch>=2.5"]


# ---- the worker protocol ---------------------------------------------------------------------------


def test_events_are_read_as_whole_lines_as_the_file_grows(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = worker_protocol.FileTail(str(path))
    assert tail.read_lines() == []  # not there yet
    with open(path, "wb") as stream:
        stream.write(worker_protocol.encode({"event": "ready"}).encode() + b'{"event": "progr')
        stream.flush()
        assert [worker_protocol.decode(line) for line in tail.read_lines()] == [{"event": "ready"}]
        stream.write(b'ess", "fraction": 0.5, "stage": "x"}\nprinted by torch\n')
        stream.flush()
        lines = tail.read_lines()
    assert worker_protocol.decode(lines[0]) == {"event": "progress", "fraction": 0.5, "stage": "x"}
    assert worker_protocol.decode(lines[1]) == {"event": "log", "text": "printed by torch"}
    assert worker_protocol.decode('{"command": "quit"}', key="command") == {"command": "quit"}


def test_worker_errors_keep_the_engines_error_types():
    from MultiTaskSegLib.engine.errors import InputError, ModelError

    assert type(error_from_event({"kind": "InputError", "message": "bad"})) is InputError
    assert type(error_from_event({"kind": "ModelError", "message": "bad"})) is ModelError
    bug = error_from_event({"kind": "unexpected", "message": "ZeroDivisionError: x", "traceback": "Traceback..."})
    assert isinstance(bug, WorkerError) and "report it" in str(bug) and "Traceback" in bug.details


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_process_end_is_said_in_words():
    assert describe_exit(-9).startswith("killed by SIGKILL (the system's out-of-memory killer")
    assert describe_exit(1) == "exit code 1"


# ---- what the panel shows ------------------------------------------------------------------------


ANSWER = {"torch": "2.6.0+cu124", "cuda": "12.4",
          "devices": [["cpu", "CPU (8 threads)"], ["cuda", "GPU 0: NVIDIA RTX A4000"]]}


def test_the_environment_and_the_device_choices_name_what_was_found():
    assert panel_support.environment_summary(ANSWER) == (
        "PyTorch 2.6.0+cu124 (CUDA 12.4); devices: CPU (8 threads), GPU 0: NVIDIA RTX A4000.")
    assert panel_support.device_choices(ANSWER) == [
        ("Automatic (GPU 0: NVIDIA RTX A4000)", "auto"), ("CPU (8 threads)", "cpu"), ("GPU 0: NVIDIA RTX A4000", "cuda")]
    assert panel_support.device_choices({"devices": [["cpu", "CPU (2 threads)"]]})[0] == (
        "Automatic (CPU: no GPU found)", "auto")


def test_structures_are_grouped_by_task():
    description = ModelDescription(tuple(DEFAULT_CLASSES), tuple(DEFAULT_TASKS), {7: 0.9})
    groups = panel_support.structure_groups(description)
    assert [title for title, _ in groups] == [f"{t.description} ({t.modality})" for t in DEFAULT_TASKS]
    assert groups[1][1] == [("pectoral muscle", "Class 7, decided by threshold")]
    again = ModelDescription.from_json({"classes": [c.to_json() for c in DEFAULT_CLASSES],
                                        "tasks": [t.to_json() for t in DEFAULT_TASKS], "thresholds": {"7": 0.9}})
    assert again == description


def test_reload_forgets_the_package_so_it_is_imported_afresh(tmp_path, monkeypatch):
    package = tmp_path / "reloadme"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 1\n")
    (package / "part.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import reloadme.part

    assert reloadme.part.VALUE == 1
    (package / "part.py").write_text("VALUE = 2\n")
    assert sorted(panel_support.forget_package_modules("reloadme")) == ["reloadme", "reloadme.part"]
    import importlib

    importlib.invalidate_caches()
    assert importlib.import_module("reloadme.part").VALUE == 2


def test_the_worker_runs_in_slicers_python_inside_slicer_and_in_this_one_outside(tmp_path, monkeypatch):
    import os
    import types

    from MultiTaskSegLib.slicer import worker_client

    monkeypatch.delenv(worker_client.PYTHON_ENV_VAR, raising=False)
    outside = types.ModuleType("slicer")  # the slicer-core wheel: no application
    monkeypatch.setitem(sys.modules, "slicer", outside)
    assert worker_client.worker_python() == sys.executable

    inside = types.ModuleType("slicer")
    inside.app = types.SimpleNamespace(slicerHome=str(tmp_path))
    monkeypatch.setitem(sys.modules, "slicer", inside)
    launcher = tmp_path / "bin" / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    launcher.parent.mkdir()
    launcher.write_text("")
    monkeypatch.setattr(worker_client.shutil, "which", lambda name: None)  # not on PATH: found in slicerHome
    assert worker_client.worker_python() == str(launcher)
    monkeypatch.setattr(worker_client.shutil, "which", lambda name: "/opt/Slicer/bin/PythonSlicer")
    assert worker_client.worker_python() == "/opt/Slicer/bin/PythonSlicer"
    launcher.unlink()
    monkeypatch.setattr(worker_client.shutil, "which", lambda name: None)
    with pytest.raises(WorkerError, match="PythonSlicer"):
        worker_client.worker_python()
    monkeypatch.setenv(worker_client.PYTHON_ENV_VAR, "/usr/bin/python3")
    assert worker_client.worker_python() == "/usr/bin/python3"
