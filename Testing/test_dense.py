"""The invariant behind the speed: dense whole-volume output equals the paper's per-voxel patches."""

import numpy as np
import pytest
import torch

from MultiTaskSegLib.engine.network import dense_logits, extract_patches, pad_volume, patch_logits

from MultiTaskSegLib.engine.prepared_model import inference_model
from MultiTaskSegLib.engine.slab_loop import dense_probabilities

from MultiTaskSegLib.engine.slab_sizing import DenseOptions
from MultiTaskSegLib.engine.network import Architecture, TriplanarCNN, parameter_count


def randomised_model(num_classes=9, seed=0, **arch):
    """A model whose eval-mode outputs vary strongly between voxels (random BN statistics too)."""
    torch.manual_seed(seed)
    model = TriplanarCNN(Architecture(num_classes=num_classes, **arch))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.8, 1.6)
                module.bias.uniform_(-0.2, 0.2)
        model.head[-1].weight.mul_(20.0)
    return model.eval()


def border_and_random_voxels(shape, n_random, rng):
    """All eight corners, points on every edge and face, plus random interior voxels."""
    z, y, x = (s - 1 for s in shape)
    corners = [(a, b, c) for a in (0, z) for b in (0, y) for c in (0, x)]
    edges = [(z // 2, 0, 0), (0, y // 2, x), (z, y, x // 2), (0, 0, x // 2), (z, y // 2, 0)]
    faces = [(0, y // 2, x // 2), (z // 2, 0, x // 2), (z // 2, y // 2, x)]
    interior = rng.integers(0, shape, size=(n_random, 3))
    return np.concatenate([np.array(corners + edges + faces), interior])


def test_architecture_matches_the_paper():
    model = TriplanarCNN(Architecture(num_classes=9))
    convs = [m for m in model.conv_stack if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 25
    assert all(c.kernel_size == (3, 3) and c.out_channels == 32 and c.padding == (0, 0) for c in convs)
    assert model.arch.patch_size == 51
    head_convs = [m for m in model.head if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in head_convs] == [
        (96, 192, (1, 1)), (192, 192, (1, 1)), (192, 9, (1, 1))]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 27
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 2
    assert sum(isinstance(m, torch.nn.ELU) for m in model.modules()) == 27
    # 25 convs (9 + 24*9216 weights), 27 BN (2 per channel), head 96*192 + 192*192 + 192*9 + 9
    expected = 9 * 32 + 24 * 9216 + 2 * (25 * 32 + 2 * 192) + 96 * 192 + 192 * 192 + 192 * 9 + 9
    assert parameter_count(model) == expected == 280873


def test_one_patch_reduces_to_one_voxel():
    model = randomised_model(num_classes=3)
    planes = [torch.randn(4, 1, 51, 51) for _ in range(3)]
    assert model(*planes).shape == (4, 3, 1, 1)


@pytest.mark.parametrize("shape", [(7, 60, 13), (30, 9, 55), (3, 4, 5)])
def test_dense_equals_patch_formulation(shape):
    """Non-cubic volumes, smaller than 51 along some axes: corners, edges, faces and random voxels."""
    rng = np.random.default_rng(sum(shape))
    volume = rng.normal(0.5, 0.5, size=shape).astype(np.float32)
    model = randomised_model()
    dense = dense_logits(model, volume)
    voxels = border_and_random_voxels(shape, 40, rng)
    reference = patch_logits(model, volume, voxels)
    got = dense[:, voxels[:, 0], voxels[:, 1], voxels[:, 2]].T
    scale = np.abs(reference).max()
    assert scale > 1.0, "outputs too flat to make the comparison meaningful"
    assert np.abs(got - reference).max() <= 1e-4 * scale


def test_patches_see_zero_outside_the_volume():
    volume = np.ones((2, 3, 4), dtype=np.float32)
    padded = pad_volume(torch.from_numpy(volume), 25)
    axial, coronal, sagittal = extract_patches(padded, torch.tensor([[0, 0, 0]]), 25)
    for patch, inside in ((axial, 3 * 4), (coronal, 2 * 4), (sagittal, 2 * 3)):
        assert patch.shape == (1, 1, 51, 51)
        assert patch.sum().item() == inside  # only the voxels of the volume's own plane are 1
        assert patch[0, 0, 25, 25] == 1.0


def test_slabs_and_foreground_box_do_not_change_the_result():
    rng = np.random.default_rng(3)
    volume = np.zeros((12, 20, 18), dtype=np.float32)
    volume[2:10, 4:15, 3:16] = rng.random((8, 11, 13)) + 0.1
    model = randomised_model()
    whole = torch.softmax(torch.from_numpy(dense_logits(model, volume)), dim=0).numpy()
    tiny_budget = DenseOptions(memory_budget_bytes=1)  # one z-slice per slab
    slabbed = dense_probabilities(inference_model(model, "fp32", "cpu", channels_last=False), volume, device="cpu",
                                  options=tiny_budget)
    inside = volume > 0
    expected = np.round(whole * 255)
    assert np.abs(slabbed[:, inside].astype(int) - expected[:, inside]).max() <= 1
    # slices without foreground are background with certainty
    assert (slabbed[0, 0] == 255).all() and (slabbed[1:, 0] == 0).all()


def test_bf16_autocast_agrees_with_fp32_labels():
    rng = np.random.default_rng(5)
    volume = rng.random((6, 40, 40)).astype(np.float32) + 0.05
    model = randomised_model()
    fp32 = dense_probabilities(model, volume, options=DenseOptions(precision="fp32"))
    bf16 = dense_probabilities(model, volume, options=DenseOptions(precision="bf16", channels_last=True))
    agreement = (fp32.argmax(0) == bf16.argmax(0)).mean()
    assert agreement >= 0.99
    assert np.abs(fp32.astype(int) - bf16.astype(int)).mean() < 3  # mean difference below ~1% probability
