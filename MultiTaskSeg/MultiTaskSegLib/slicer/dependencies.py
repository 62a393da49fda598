"""Python packages the engine needs inside Slicer: find what is missing and install it.

No Qt here: the widget asks the user first and then calls :func:`install_missing`.

* torch comes from the PyTorch extension's installer (``PyTorchUtils``) when that extension is
  installed: it picks the CUDA build matching the GPU that ``nvidia-smi`` reports, or the CPU
  build. Without the extension, Slicer's pip installs torch from PyPI (CUDA on Linux by default).
* Other packages come through ``slicer.util.pip_install``.
* numpy, SimpleITK and VTK ship with Slicer and are never installed or upgraded here: replacing
  them breaks Slicer.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from typing import Callable, Dict, List, Optional

TORCH_VERSION_REQUIREMENT = ">=2.0"
# import name -> pip requirement (pyproject.toml lists the same minimum versions)
REQUIRED_PACKAGES: Dict[str, str] = {
    "torch": "torch" + TORCH_VERSION_REQUIREMENT,
    "safetensors": "safetensors>=0.4",
    "scipy": "scipy>=1.8",
}
# Shipped by Slicer: never pip-installed, even if an import fails.
SLICER_SHIPPED = ("numpy", "SimpleITK", "vtk")

Installer = Callable[[str], None]


def is_installed(import_name: str) -> bool:
    """True when ``import_name`` can be imported (found on the path; not imported here)."""
    return importlib.util.find_spec(import_name) is not None


def missing_packages() -> List[str]:
    """Import names of the required packages that are not installed."""
    return [name for name in REQUIRED_PACKAGES if not is_installed(name)]


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


def describe_missing(missing: Optional[List[str]] = None) -> str:
    """A sentence for the confirmation dialog: what will be installed, and how."""
    missing = missing_packages() if missing is None else missing
    if not missing:
        return "All required Python packages are installed."
    parts = []
    if "torch" in missing:
        how = "the PyTorch extension's installer" if pytorch_extension_logic() else "pip"
        build = "a CUDA (GPU) build" if has_nvidia_gpu() else "the CPU build"
        parts.append(f"PyTorch ({build}, through {how}; about 1-3 GB)")
    parts += [REQUIRED_PACKAGES[name] for name in missing if name != "torch"]
    return "MultiTaskSeg needs these Python packages: " + ", ".join(parts) + ". Install them now?"


def install_missing(pip_install: Optional[Installer] = None, torch_installer=None) -> List[str]:
    """Install the missing required packages; returns what was installed.

    ``pip_install`` defaults to ``slicer.util.pip_install``; ``torch_installer`` to the PyTorch
    extension's logic when present (both injectable for tests). Call after asking the user.
    """
    missing = missing_packages()
    if not missing:
        return []
    if pip_install is None:
        import slicer

        pip_install = slicer.util.pip_install
    if "torch" in missing:
        torch_installer = torch_installer if torch_installer is not None else pytorch_extension_logic()
        if torch_installer is not None:
            # light-the-torch picks the CUDA build for the detected NVIDIA driver, else the CPU build.
            torch_installer.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_VERSION_REQUIREMENT)
        else:
            pip_install(REQUIRED_PACKAGES["torch"])
    others = [REQUIRED_PACKAGES[name] for name in missing if name != "torch" and name not in SLICER_SHIPPED]
    if others:
        pip_install(" ".join(others))
    importlib.invalidate_caches()
    still_missing = missing_packages()
    if still_missing:
        from ..engine.errors import MultiTaskSegError

        raise MultiTaskSegError(
            f"Installing {', '.join(still_missing)} did not succeed: see the Python console for pip's "
            "output, then restart Slicer and try again (or install the PyTorch extension first)."
        )
    return missing
