"""Dropout masks come from a counter-based hash of (seed, layer, iteration, global sample index, element):
the same bits whatever the split of the batch over replicas, and the right keep fraction."""
import numpy as np
import pytest

from vggtool.layers.neuron import dropout_key, keep_bits
from vggtool.testing import layer_net

M32 = 0xFFFFFFFF


def mix32_reference(x):
    """The same hash written with Python integers (no wrapping arrays), one value at a time."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def keep_bits_reference(key, sample, element):
    s = mix32_reference(mix32_reference(sample) ^ key)
    return mix32_reference(mix32_reference((element * 0x9E3779B9 + s) & M32))


def test_bits_equal_the_integer_reference():
    key = dropout_key(12345, "drop6", 77)
    bits = keep_bits(np, key, 1000, (3, 2, 5))
    for n in range(3):
        for e in range(10):
            assert int(bits[n].reshape(-1)[e]) == keep_bits_reference(key, 1000 + n, e)


def test_a_split_batch_draws_the_whole_batch_bits():
    key = dropout_key(3, "drop", 9)
    whole = keep_bits(np, key, 0, (8, 4, 3))
    halves = np.concatenate([keep_bits(np, key, 0, (4, 4, 3)), keep_bits(np, key, 4, (4, 4, 3))])
    np.testing.assert_array_equal(halves, whole)


def masks(batch, offset=0, seed=0, iteration=0, ratio=0.3, name="drop"):
    x = np.ones((batch, 6, 5))
    net = layer_net(f'layer {{ name: "{name}" type: "Dropout" bottom: "x" top: "y" '
                    f'dropout_param {{ dropout_ratio: {ratio} }} }}', {"x": x}, seed=seed)
    net.blobs["x"].data[...] = x
    net.iteration, net.sample_offset = iteration, offset
    net.forward_from_to(1, 1)
    return net.blobs["y"].data.copy()


def test_two_replicas_get_the_whole_batch_mask():
    whole = masks(8)
    np.testing.assert_array_equal(np.concatenate([masks(4, 0), masks(4, 4)]), whole)
    values = np.unique(whole)
    assert len(values) == 2 and values[0] == 0 and values[1] == pytest.approx(1 / 0.7, rel=1e-6)  # dropout_ratio is a float field


def test_same_key_same_mask_and_any_change_another():
    base = masks(4)
    np.testing.assert_array_equal(masks(4), base)
    for other in (masks(4, iteration=1), masks(4, seed=1), masks(4, name="drop7"), masks(4, offset=4)):
        assert (other != base).mean() > 0.2  # about 2 p (1 - p) = 0.42 of the units differ


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_keep_fraction_and_independence(ratio):
    p = 1 - ratio
    n_samples, per = 256, 1024
    threshold = min(round(p * 2**32), 2**32 - 1)
    keep = keep_bits(np, dropout_key(7, "fc", 3), 0, (n_samples, per)) < np.uint32(threshold)
    n = keep.size
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(keep.mean() - p) < 5 * sigma
    # Neighbours (next element, next sample) are kept together with probability p^2, as independent draws.
    for a, b in ((keep[:, 1:], keep[:, :-1]), (keep[1:], keep[:-1])):
        both = (a & b).mean()
        assert abs(both - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / a.size)
    # Each sample's own keep fraction spreads like a binomial's (not one fixed pattern shifted around).
    per_sample = keep.mean(axis=1)
    assert 0.5 < per_sample.std() / np.sqrt(p * (1 - p) / per) < 1.5
