"""PNG overlays (make demo): every plane shown, coloured where labelled, each panel and its title
in its own place whatever the volume's proportions."""

import numpy as np
from PIL import Image

from MultiTaskSegLib.engine.geometry import Volume
from MultiTaskSegLib.cli.overlays import save_overlay
from MultiTaskSegLib.engine.classes import DEFAULT_CLASSES


def volume_with_cube(shape):
    image = np.zeros(shape, np.float32)
    image[1:-1, 1:-1, 1:-1] = 100.0
    labels = np.zeros(shape, np.uint8)
    centre = [n // 2 for n in shape]
    labels[tuple(slice(c - 3, c + 3) for c in centre)] = 8  # coronary arteries
    return Volume(image, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)), labels


def class_coloured_columns(png, colour, alpha=0.45):
    """Image columns and rows holding label pixels: (1 - alpha) * grey + alpha * the class colour,
    whatever the grey (the legend's patches are the pure colour, so they do not count)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(float) / 255
    grey = rgb - alpha * np.asarray(colour)
    hits = (np.ptp(grey, axis=-1) < 0.04) & (grey.min(axis=-1) > -0.03) & (np.ptp(rgb, axis=-1) > 0.1)
    return rgb.shape, np.flatnonzero(hits.any(axis=0)), np.flatnonzero(hits.any(axis=1))


def test_overlay_shows_the_labels_in_all_three_planes_and_both_rows(tmp_path):
    volume, labels = volume_with_cube((40, 30, 30))
    colour = DEFAULT_CLASSES[8].color
    png = save_overlay(volume, labels, DEFAULT_CLASSES, tmp_path / "o.png", title="t", reference=labels)
    shape, columns, rows = class_coloured_columns(png, colour)
    # three separate panels across (gaps between the coloured runs), two rows down
    assert len(np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)) == 3
    assert len(np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)) == 2
    assert shape[1] >= 1000


def test_panels_and_titles_never_overlap_whatever_the_proportions(tmp_path, monkeypatch):
    """A square axial plane beside flat coronal and sagittal ones used to run into the next row's
    titles (the coronary phantom of make demo)."""
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    for shape in ((40, 64, 64), (60, 40, 20), (30, 30, 30), (20, 50, 80)):
        volume, labels = volume_with_cube(shape)
        save_overlay(volume, labels, DEFAULT_CLASSES, tmp_path / f"{shape[0]}.png", title="t", reference=labels)
        figure = figures[-1]
        renderer = figure.canvas.get_renderer()
        images = [ax.get_window_extent(renderer) for ax in figure.axes]  # after the aspect is applied
        titles = [ax.title.get_window_extent(renderer) for ax in figure.axes]
        assert len(images) == 6
        for i, image in enumerate(images):
            for j, other in enumerate(images[i + 1:] + titles[:i] + titles[i + 1:]):
                overlap_x = min(image.x1, other.x1) - max(image.x0, other.x0)
                overlap_y = min(image.y1, other.y1) - max(image.y0, other.y0)
                assert overlap_x <= 1 or overlap_y <= 1, (shape, i, image, other)
