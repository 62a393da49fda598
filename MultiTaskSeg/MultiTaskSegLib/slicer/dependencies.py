"""Python packages the engine needs inside Slicer: find what is missing or too old, install it.

No Qt, no torch import here: Slicer's process never imports torch (the worker process does, and
reports the version and devices it found). Presence and versions come from the installed
packages' metadata, so a broken torch cannot break the panel's setup; the worker's import is the
real test, and its failure reaches the panel as a message.

* torch comes from the PyTorch extension's installer (``PyTorchUtils``) when that extension is
  installed: it picks the CUDA build matching the GPU that ``nvidia-smi`` reports, or the CPU
  build. Without the extension, Slicer's pip installs PyPI's torch: CUDA builds on Linux only
  (PyPI's torch for Windows is CPU-only; macOS has no CUDA).
* Other packages come through ``slicer.util.pip_install``.
* numpy, SimpleITK and VTK ship with Slicer and are never installed or upgraded here: replacing
  them breaks Slicer.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import shutil
import sys
from typing import Callable, Dict, List, Optional, Tuple

# torch.OutOfMemoryError, which the engine catches to shrink a slab, exists from torch 2.5 on; on an
# older torch the ``except`` clause itself would raise.
TORCH_MINIMUM_VERSION = "2.5"
TORCH_VERSION_REQUIREMENT = ">=" + TORCH_MINIMUM_VERSION
# import name -> (distribution name, minimum version) (pyproject.toml lists the same minimums)
REQUIRED_PACKAGES: Dict[str, Tuple[str, str]] = {
    "torch": ("torch", TORCH_MINIMUM_VERSION),
    "safetensors": ("safetensors", "0.4"),
    "scipy": ("scipy", "1.8"),
}
# Shipped by Slicer: never pip-installed, even if an import fails.
SLICER_SHIPPED = ("numpy", "SimpleITK", "vtk")

Installer = Callable[[str], None]


def version_tuple(version: str) -> Tuple[int, ...]:
    """The leading numbers of a version: "2.13.0+cpu" -> (2, 13, 0), "2.5.0rc1" -> (2, 5, 0)."""
    numbers = re.match(r"\d+(\.\d+)*", version.strip())
    return tuple(int(part) for part in numbers.group(0).split(".")) if numbers else ()


def installed_version(distribution: str) -> Optional[str]:
    """The installed version of a distribution, from its metadata (nothing is imported)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def requirement(import_name: str) -> str:
    distribution, minimum = REQUIRED_PACKAGES[import_name]
    return f"{distribution}>={minimum}"


def missing_packages() -> List[str]:
    """Import names of the required packages that are absent or older than their minimum."""
    missing = []
    for name, (distribution, minimum) in REQUIRED_PACKAGES.items():
        version = installed_version(distribution)
        if importlib.util.find_spec(name) is None or version is None or version_tuple(version) < version_tuple(minimum):
            missing.append(name)
    return missing


def describe_problems() -> str:
    """One sentence per missing or too old package, for the panel ("" when all is well)."""
    lines = []
    for name in missing_packages():
        distribution, minimum = REQUIRED_PACKAGES[name]
        version = installed_version(distribution)
        if version is None or importlib.util.find_spec(name) is None:
            lines.append(f"{distribution} is not installed.")
        else:
            lines.append(f"{distribution} {version} is too old: {minimum} or newer is needed.")
    return " ".join(lines)


def has_nvidia_gpu() -> bool:
    """True when ``nvidia-smi`` is on the path, i.e. a CUDA build of torch can be used."""
    return shutil.which("nvidia-smi") is not None


def pytorch_extension_logic():
    """The PyTorch extension's ``PyTorchUtilsLogic``, or None when that extension is absent."""
    try:
        module = importlib.import_module("PyTorchUtils")
    except ImportError:
        return None
    return module.PyTorchUtilsLogic()


def torch_build_promise(platform: str = sys.platform, extension_present: Optional[bool] = None,
                        nvidia_gpu: Optional[bool] = None) -> str:
    """Which torch build an installation will bring, as the confirmation dialog says it."""
    extension_present = pytorch_extension_logic() is not None if extension_present is None else extension_present
    nvidia_gpu = has_nvidia_gpu() if nvidia_gpu is None else nvidia_gpu
    if extension_present:
        build = "the CUDA (GPU) build matching your NVIDIA driver" if nvidia_gpu else "the CPU build"
        return f"PyTorch ({build}, through the PyTorch extension's installer; about 1-3 GB)"
    if platform.startswith("linux") and nvidia_gpu:
        return "PyTorch (PyPI's default Linux build, with CUDA, through pip; about 3 GB)"
    reason = "PyPI's torch for Windows is CPU-only" if platform.startswith("win") else "no NVIDIA GPU found"
    if platform == "darwin":
        reason = "macOS has no CUDA"
    return (f"PyTorch (the CPU build, through pip; {reason}: for a GPU build install the PyTorch "
            "extension first; about 1 GB)")


def describe_missing(missing: Optional[List[str]] = None) -> str:
    """The confirmation dialog's question: what will be installed, and how."""
    missing = missing_packages() if missing is None else missing
    if not missing:
        return "All required Python packages are installed."
    parts = [torch_build_promise()] if "torch" in missing else []
    parts += [requirement(name) for name in missing if name != "torch"]
    return "MultiTaskSeg needs these Python packages: " + ", ".join(parts) + ". Install them now?"


def _default_pip_install() -> Installer:
    import slicer

    return slicer.util.pip_install


def install_torch(pip_install: Optional[Installer] = None, torch_installer=None, reinstall: bool = False) -> None:
    """Install torch (``reinstall``: uninstall it first), through the PyTorch extension when present.

    Stop the worker process first (it holds torch's files open, which blocks removing them on
    Windows); Slicer's own process never imports torch.
    """
    torch_installer = torch_installer if torch_installer is not None else pytorch_extension_logic()
    if torch_installer is not None:
        if reinstall:
            torch_installer.uninstallTorch()
        # light-the-torch picks the CUDA build for the detected NVIDIA driver, else the CPU build.
        torch_installer.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_VERSION_REQUIREMENT)
        return
    pip_install = pip_install or _default_pip_install()
    pip_install(("--force-reinstall " if reinstall else "") + requirement("torch"))


def install_missing(pip_install: Optional[Installer] = None, torch_installer=None) -> List[str]:
    """Install the missing required packages; returns what was installed.

    ``pip_install`` defaults to ``slicer.util.pip_install``; ``torch_installer`` to the PyTorch
    extension's logic when present (both injectable for tests). Call after asking the user.
    """
    missing = missing_packages()
    if not missing:
        return []
    if "torch" in missing:
        install_torch(pip_install, torch_installer)
    others = [requirement(name) for name in missing if name != "torch" and name not in SLICER_SHIPPED]
    if others:
        (pip_install or _default_pip_install())(" ".join(others))
    importlib.invalidate_caches()
    still_missing = missing_packages()
    if still_missing:
        from ..engine.errors import MultiTaskSegError

        raise MultiTaskSegError(
            f"Installing {', '.join(still_missing)} did not succeed: see the Python console for pip's "
            "output, then restart Slicer and try again (or install the PyTorch extension first)."
        )
    return missing
