"""Building blocks of the spectrum module not covered through the features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft

from cryomanifold.spectrum import half_irfft2


@pytest.mark.parametrize("box", [64, 45, 48, 100])
def test_half_irfft2_is_irfft2_bit_for_bit(box):
    """From the first columns of a low-passed spectrum, or from all of them."""
    rng = np.random.default_rng(0)
    spec = sfft.rfft2(rng.standard_normal((5, box, box)).astype(np.float32))
    low = spec * (np.arange(box // 2 + 1) < 7)
    expected = sfft.irfft2(low, s=(box, box))
    out = half_irfft2(low, box, columns=7)
    assert out.shape == (5, box, box) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(half_irfft2(spec, box), sfft.irfft2(spec, s=(box, box)))
