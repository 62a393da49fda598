"""A real whole-head T1 with brain labels: pydeface's mean head, labelled by registration.

``pydeface`` (MIT licence) ships ``data/mean_reg2mean.nii.gz``, a mean of registered T1 heads with
scalp, skull, face and neck (176 x 256 x 256 at about 1 mm): the only head with its skull in the
packages here. Its brain gets labels by registering the MNI152 brain template, with its
Desikan-Killiany generation labels, onto it with SimpleITK: an affine stage, then a coarse
B-spline, with the metric restricted to the template's brain, so that the scalp, the skull and
the face (which the brain-extracted template lacks) do not pull the brain off. Everything outside
the registered brain is background for training; its non-brain tissue gets three generation
labels by intensity (dark: bone, air, CSF; intermediate: muscle, skin; bright: fat, marrow) so
that synthesis can also paint this head with random contrast.

Registration takes about a minute of CPU; the result is cached (``cache_dir()``), keyed by the
input files, never written into the repository.

The head is a *training* case, not a second held-out one: it is the only real skull, scalp, face
and neck that ships here, and what the shipped model got wrong on whole heads is exactly their
appearance; as a test case its reference would be this registration of the same atlas the
training brains carry, so its Dice would measure the registration as much as the model. The
held-out case stays the ICBM 2009a brain, skull-stripped and inside synthetic heads.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
from scipy import ndimage

from ..engine.errors import InputError
from ..engine.geometry import Volume
from ..engine.progress import ProgressCallback, report
from ..training import generation_labels as gen
from . import brain_templates

REGISTRATION_VERSION = 1  # bump when the registration changes, so cached labels are redone
# the top of the brain sits about this far below the top of the head (scalp, skull, CSF)
_VERTEX_DEPTH_MM = 14.0


def pydeface_head_path() -> Path:
    spec_dir = brain_templates._package_dir("pydeface")
    return brain_templates._existing(spec_dir / "data" / "mean_reg2mean.nii.gz")


def cache_dir() -> Path:
    """Where derived data is cached: $MULTITASKSEG_CACHE, else $XDG_CACHE_HOME/multitaskseg, else
    ~/.cache/multitaskseg."""
    explicit = os.environ.get("MULTITASKSEG_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "multitaskseg"


def head_mask(image: np.ndarray) -> np.ndarray:
    """The head (everything but the air around it): above a fraction of the bright tissue's level,
    holes (sinuses, airway, dark bone) filled slice by slice and in 3D, largest component."""
    positive = image[image > 0]
    if positive.size == 0:
        raise InputError("The head image has no voxel above 0: check the file.")
    level = 0.12 * float(np.percentile(positive, 98))
    # dark bone and air cavities open to the outside in 3D, but rarely in every slice
    return _fill_holes_every_way(_largest_component(ndimage.binary_closing(image > level, iterations=2)))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == sizes.argmax()


def _fill_holes_every_way(mask: np.ndarray) -> np.ndarray:
    """Holes filled in 3D and in every slice of all three axes (ventricles, CSF clefts)."""
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        mask = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)], axis=axis)
    return mask


def rough_brain_mask(image: np.ndarray, head: np.ndarray, spacing_mm: float = 1.0) -> np.ndarray:
    """An independent, simple brain outline of a T1 head, for checking a registration.

    White matter's level is read deep inside the cranium (more than 25 mm under the head's
    surface, in its top 9 cm); brain is the band of white and grey matter intensities, eroded to
    cut its thin links to the scalp, face and neck, the largest piece, grown back and filled.
    Crude (it knows nothing of the atlas), so only its outline is worth comparing.
    """
    depth = ndimage.distance_transform_edt(head) * spacing_mm
    rows = np.flatnonzero(head.any(axis=(1, 2)))
    top = rows.max()
    cranium = (depth > 25.0) & (np.arange(head.shape[0])[:, None, None] > top - 90.0 / spacing_mm)
    white = float(np.percentile(image[cranium], 80))
    ball = ndimage.generate_binary_structure(3, 1)
    band = head & (image > 0.7 * white) & (image < 1.12 * white)
    core = _largest_component(ndimage.binary_erosion(band, ball, iterations=4))
    brain = ndimage.binary_dilation(core, ball, iterations=5, mask=head & (image > 0.55 * white))
    brain = ndimage.binary_closing(brain, ball, iterations=3)
    return _largest_component(_fill_holes_every_way(brain))


def _initial_transform(head: Volume, head_region: np.ndarray, brain: Volume):
    """Moves the template's brain under the head's vertex: the brain's top _VERTEX_DEPTH_MM below
    the head's top, its left-right and front-back centre on the cranium's (top 9 cm of the head)."""
    import SimpleITK as sitk

    head_points = head.index_to_physical(np.argwhere(head_region)[:, ::-1][::7])
    brain_points = brain.index_to_physical(np.argwhere(brain.array > 0)[:, ::-1][::7])
    head_top, brain_top = head_points[:, 2].max(), brain_points[:, 2].max()
    cranium = head_points[head_points[:, 2] > head_top - 90.0]
    brain_centre = brain_points.mean(axis=0)
    target = np.array([cranium[:, 0].mean(), cranium[:, 1].mean(),
                       head_top - _VERTEX_DEPTH_MM - (brain_top - brain_centre[2])])
    transform = sitk.AffineTransform(3)
    transform.SetCenter(tuple(float(v) for v in target))
    transform.SetTranslation(tuple(float(v) for v in brain_centre - target))  # fixed (head) -> moving (brain)
    return transform


def register_brain_to_head(head: Volume, brain: Volume, bspline: bool = True,
                           progress: Optional[ProgressCallback] = None):
    """A SimpleITK transform mapping points of ``head`` to points of the brain-extracted ``brain``:
    affine, then an optional coarse B-spline (6^3 mesh), both at 4 and 2 times coarser than the
    images, Mattes mutual information sampled where the transform lands within 10 voxels of the
    brain. The 10-voxel ring matters: the template's zeros there meet the head's dark CSF and skull,
    which holds the brain's outline at the inner table instead of letting it shrink."""
    import SimpleITK as sitk

    fixed = sitk.Cast(head.to_sitk(), sitk.sitkFloat32)
    moving = sitk.Cast(brain.to_sitk(), sitk.sitkFloat32)
    ring = ndimage.binary_dilation(brain.array > 0, iterations=10).astype(np.uint8)
    moving_mask = brain.with_array(ring).to_sitk()

    def method():
        r = sitk.ImageRegistrationMethod()
        r.SetMetricAsMattesMutualInformation(32)
        r.SetMetricSamplingStrategy(r.RANDOM)
        r.SetMetricSamplingPercentage(0.05, seed=1)
        r.SetMetricMovingMask(moving_mask)
        r.SetInterpolator(sitk.sitkLinear)
        r.SetShrinkFactorsPerLevel([4, 2])
        r.SetSmoothingSigmasPerLevel([2.0, 1.0])
        r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        return r

    report(progress, 0.05, "Registering the template brain to the head (affine)")
    affine = _initial_transform(head, head_mask(head.array), brain)
    stage = method()
    stage.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-4, 200, relaxationFactor=0.6,
                                                   gradientMagnitudeTolerance=1e-6)
    stage.SetOptimizerScalesFromPhysicalShift()
    stage.SetInitialTransform(affine, inPlace=True)
    stage.Execute(fixed, moving)
    if not bspline:
        return affine
    report(progress, 0.3, "Registering the template brain to the head (B-spline)")
    local = sitk.BSplineTransformInitializer(fixed, [6, 6, 6], order=3)
    stage = method()
    stage.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=30,
                               maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=1000)
    stage.SetMovingInitialTransform(affine)
    stage.SetInitialTransform(local, inPlace=True)
    stage.Execute(fixed, moving)
    composite = sitk.CompositeTransform(affine)
    composite.AddTransform(local)  # applied first: head point -> B-spline -> affine -> template point
    return composite


def warp_labels(labels: np.ndarray, source: Volume, target: Volume, transform) -> np.ndarray:
    """``labels`` on ``source``'s grid carried onto ``target``'s grid (nearest neighbour)."""
    import SimpleITK as sitk

    warped = sitk.Resample(source.with_array(labels.astype(np.uint8)).to_sitk(), target.to_sitk(), transform,
                           sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(warped)


def _warp_image(source: Volume, target: Volume, transform) -> np.ndarray:
    import SimpleITK as sitk

    warped = sitk.Resample(sitk.Cast(source.to_sitk(), sitk.sitkFloat32), target.to_sitk(), transform,
                           sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(warped)


def head_tissue_labels(image: np.ndarray, head: np.ndarray, brain: np.ndarray, white: float) -> np.ndarray:
    """Generation labels of a real head's non-brain tissue by intensity relative to white matter."""
    out = np.zeros(image.shape, np.uint8)
    tissue = head & ~brain
    relative = image / max(white, 1e-6)
    out[tissue & (relative < 0.35)] = gen.code("head tissue, dark")
    out[tissue & (relative >= 0.35) & (relative < 0.8)] = gen.code("head tissue, intermediate")
    out[tissue & (relative >= 0.8)] = gen.code("head tissue, bright")
    return out


def _cache_file(folder: Path) -> Path:
    parts = [str(REGISTRATION_VERSION)]
    for path in (pydeface_head_path(), brain_templates.mni152_t1_path(), brain_templates.desikan_killiany_path()):
        stat = os.stat(path)
        parts += [path.name, str(stat.st_size)]
    return folder / f"pydeface_head_labels-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:12]}.npz"


def whole_head_case(cache: Optional[Path] = None, progress: Optional[ProgressCallback] = None
                    ) -> Tuple[Volume, np.ndarray, np.ndarray, Dict[str, float]]:
    """The pydeface head: (image, training labels 0..6, generation labels, registration checks).

    The checks are ``registration_checks``'. The labels are cached (see ``cache_dir``); the first
    call registers (about a minute).
    """
    from ..engine import image_reading

    head_volume = image_reading.read_volume(pydeface_head_path())
    head = head_volume.with_array(head_volume.array.astype(np.float32))
    folder = Path(cache) if cache is not None else cache_dir()
    cache_file = _cache_file(folder)
    if cache_file.exists():
        with np.load(cache_file) as data:
            generation, checks = data["generation"], json.loads(str(data["checks"]))
        return head, gen.training_labels(generation), generation, checks
    template, _ = brain_templates.mni152_brain_case()
    template_generation = brain_templates.generation_labels_on(template)
    transform = register_brain_to_head(head, template, progress=progress)
    report(progress, 0.9, "Labelling the head")
    brain_generation = warp_labels(template_generation, template, head, transform)
    warped_template = _warp_image(template, head, transform)
    inside_head = head_mask(head.array)
    brain_generation[~inside_head] = 0
    labels = gen.training_labels(brain_generation)
    white = float(np.median(head.array[labels == 1]))
    generation = np.where(brain_generation > 0, brain_generation,
                          head_tissue_labels(head.array, inside_head, brain_generation > 0, white)).astype(np.uint8)
    checks = registration_checks(head.array, labels, generation, warped_template, inside_head)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(cache_file.stem + f".tmp-{os.getpid()}.npz")
    np.savez_compressed(tmp, generation=generation, checks=json.dumps(checks))
    os.replace(tmp, cache_file)
    return head, labels, generation, checks


def registration_checks(image: np.ndarray, labels: np.ndarray, generation: np.ndarray, warped_template: np.ndarray,
                        inside_head: np.ndarray) -> Dict[str, float]:
    """Figures that tell whether the registered labels sit on the head's brain: the correlation of
    the warped template with the head within the brain, the Dice of the registered brain's outline
    with ``rough_brain_mask``'s, and the head's median intensity per class relative to white matter
    (the template's own: cortex 0.81, deep grey 0.88, ventricles 0.35, cerebellum 0.81, stem 0.87)."""
    from ..engine.metrics import dice

    brain = gen.brain_lookup()[generation]
    checks = {"correlation_in_brain": round(float(np.corrcoef(image[brain], warped_template[brain])[0, 1]), 3),
              "outline_dice_vs_rough_mask": round(float(dice(_fill_holes_every_way(brain),
                                                             rough_brain_mask(image, inside_head))), 3)}
    white = float(np.median(image[labels == 1]))
    for index, name in ((2, "cortex"), (3, "deep_grey"), (4, "ventricles"), (5, "cerebellum"), (6, "brain_stem")):
        checks[f"{name}_over_white_matter"] = round(float(np.median(image[labels == index])) / white, 3)
    return checks
