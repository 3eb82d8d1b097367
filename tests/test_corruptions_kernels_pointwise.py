"""The compiled CPU kernels of gaussian_noise, brightness, contrast, frost, fog (and its plasma),
defocus_blur and zoom_blur against the tensor program they replace (the path of CUDA batches and float input, run
here on the CPU by patching ``_on_host``): the same bits, at every severity, for square and
non-square images, one generator and one per image."""
from unittest import mock

import pytest
import torch

from corruption_batches import both_paths, photo_batch

from timm_xbn.corruptions import torch_ops
from timm_xbn.corruptions.torch_ops import Draws, plasma_fractal

NAMES = ("gaussian_noise", "brightness", "contrast", "frost", "fog", "defocus_blur", "zoom_blur")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(5, 64, 64), (1, 48, 80), (5, 80, 48)])
def test_kernels_give_the_tensor_programs_bits(monkeypatch, name, shape):
    x = photo_batch(*shape)
    for severity in range(1, 6):
        for per_image in (False, True):
            host, device = both_paths(monkeypatch, x, name, severity, seed=11 if per_image else 5, per_image=per_image)
            assert host.dtype == torch.uint8 and host.shape == x.shape
            assert torch.equal(host, device), (name, shape, severity, per_image)


@pytest.mark.parametrize("name", NAMES)
def test_kernels_give_the_tensor_programs_bits_at_224_px(monkeypatch, name):
    x = photo_batch(2, 224, 224)
    for severity in (1, 5):
        host, device = both_paths(monkeypatch, x, name, severity, seed=5)
        assert torch.equal(host, device), (name, severity)


def test_kernels_leave_float_input_to_the_tensor_program(monkeypatch):
    """Float batches (the study's) never take the uint8 kernels: the same result with the kernels
    switched off; fog's plasma kernel, which float batches do take, gives the tensor program's bits."""
    x = photo_batch(3, 48, 80).float() / 255
    for name in NAMES:
        host, device = both_paths(monkeypatch, x, name, 3, seed=5)
        assert host.dtype == torch.float32 and torch.equal(host, device), name


@pytest.mark.parametrize("size", [2, 32, 256])
def test_plasma_kernel_gives_the_tensor_programs_bits(size):
    for decay, batch, scale in ((2.0, 1, 1.0), (1.7, 3, 637.5), (1.4, 2, 382.5)):
        maps = []
        for on_host in (True, False):
            draws = Draws(torch.Generator().manual_seed(size), torch.device("cpu"), torch.float32)
            with mock.patch.object(torch_ops, "_on_host", lambda t: on_host):
                maps.append(plasma_fractal(batch, size, decay, draws, scale))
        assert maps[0].shape == (batch, size, size)
        assert torch.equal(*maps), (size, decay)
        assert torch.equal(maps[0].amin(dim=(1, 2)), torch.zeros(batch))  # shifted to 0, scaled to `scale`
        torch.testing.assert_close(maps[0].amax(dim=(1, 2)), torch.full((batch,), scale))


def test_uniform_kernel_gives_the_tensor_programs_bits():
    """``Draws.uniform`` on the CPU (fog's plasma, elastic_transform's fields, the blur angles): the
    compiled shift, multiply and add against torch's three passes, and the numbers in [low, high)."""
    for low, high in ((-1.0, 1.0), (-45.0, 45.0), (-1.12, 1.12), (-135.0, -45.0)):
        values = []
        for on_host in (True, False):
            draws = Draws(torch.Generator().manual_seed(3), torch.device("cpu"), torch.float32)
            with mock.patch.object(torch_ops, "_on_host", lambda t: on_host):
                values.append(draws.uniform((7, 1001), low, high))
        assert torch.equal(*values), (low, high)
        assert low <= values[0].min() and values[0].max() < high
