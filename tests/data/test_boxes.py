"""Box geometry (vggtool.data.boxes) against hand-computed cases."""
import numpy as np
import pytest

from vggtool.data import boxes as B


def test_isotropic_rescale_crop_flip_hand_computed():
    # A 100x200 (h x w) image, box x 20..60, y 10..50. Rescale smallest side 100 -> 50: factor 1/2.
    box = [[20, 10, 60, 50]]
    r = B.resize_boxes(box, (100, 200), (50, 100))
    np.testing.assert_allclose(r, [[10, 5, 30, 25]])
    # Crop 40x40 at (x 5, y 0): (5, 5, 25, 25); flip in the 40-wide crop: x -> 40 - x.
    c = B.crop_boxes(r, 5, 0, 40, 40)
    np.testing.assert_allclose(c, [[5, 5, 25, 25]])
    f = B.flip_boxes(c, 40)
    np.testing.assert_allclose(f, [[15, 5, 35, 25]])
    # Normalised centre form: cx 25/40, cy 15/40, w 20/40, h 20/40.
    np.testing.assert_allclose(B.to_cxcywh(f, 40, 40), [[0.625, 0.375, 0.5, 0.5]])
    np.testing.assert_allclose(B.from_cxcywh([[0.625, 0.375, 0.5, 0.5]], 40, 40), f)


def test_crop_clips_to_the_crop():
    c = B.crop_boxes([[0, 0, 100, 30]], 10, 20, 50, 40)
    np.testing.assert_allclose(c, [[0, 0, 50, 10]])


def test_flip_twice_is_identity_and_whole_image_box_is_unit():
    box = np.array([[3.5, 1.0, 9.0, 7.25]])
    np.testing.assert_allclose(B.flip_boxes(B.flip_boxes(box, 12), 12), box)
    np.testing.assert_allclose(B.to_cxcywh([[0, 0, 32, 16]], 32, 16), [[0.5, 0.5, 1, 1]])
    # Negative predicted widths count as zero.
    np.testing.assert_allclose(B.from_cxcywh([[0.5, 0.5, -1, 0.5]], 10, 10), [[5, 2.5, 5, 7.5]])


def test_iou_hand_computed():
    a = [[0, 0, 2, 2]]
    # Overlap 1x2 = 2, union 4 + 4 - 2 = 6.
    assert B.iou(a, [[1, 0, 3, 2]])[0, 0] == pytest.approx(1 / 3)
    assert B.iou(a, [[0, 0, 2, 2]])[0, 0] == 1
    assert B.iou(a, [[2, 0, 4, 2]])[0, 0] == 0  # touching edges
    assert B.iou(a, [[1, 1, 1, 1]])[0, 0] == 0  # empty box
    # Contained: 1 / 4.
    assert B.iou(a, [[0, 0, 1, 1]])[0, 0] == pytest.approx(0.25)
    m = B.iou([[0, 0, 2, 2], [0, 0, 1, 1]], [[0, 0, 2, 2], [1, 0, 3, 2], [5, 5, 6, 6]])
    np.testing.assert_allclose(m, [[1, 1 / 3, 0], [0.25, 0, 0]])


def test_merge_closest_pair_first_weighted_average():
    # Three near-identical boxes around (0,0,10,10) and one far away.
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 12], [50, 50, 60, 60]]
    merged, w = B.merge_boxes(boxes, threshold=0.5)
    # Closest pair: IoU(b0, b1) = 90/110 = .818, IoU(b0, b2) = 100/120 = .833 -> b0+b2 first ->
    # (0, 0, 10, 11) weight 2; then with b1: IoU = 90/(110+100-90) = .75 -> (2 m + b1) / 3.
    np.testing.assert_allclose(merged[0], [1 / 3, 0, 31 / 3, 32 / 3])
    assert list(w) == [3, 1]
    np.testing.assert_allclose(merged[1], [50, 50, 60, 60])


def test_merge_threshold_and_score_weights():
    boxes = [[0, 0, 10, 10], [2, 0, 12, 10]]  # IoU = 80 / 120 = 2/3, distance 1/3
    m, w = B.merge_boxes(boxes, threshold=0.3)
    assert len(m) == 2
    m, w = B.merge_boxes(boxes, weights=[3.0, 1.0], threshold=0.34)
    np.testing.assert_allclose(m, [[0.5, 0, 10.5, 10]])
    assert w[0] == 4.0
    # Ranking: the heavier cluster first even when it comes later in the input.
    m, w = B.merge_boxes([[0, 0, 1, 1], [5, 5, 9, 9], [5, 5, 9, 9.1]], threshold=0.5)
    np.testing.assert_allclose(m[0], [5, 5, 9, 9.05])
    assert list(w) == [2, 1]
    assert B.merge_boxes(np.zeros((0, 4)))[0].shape == (0, 4)


def test_correct_needs_class_and_iou_above_half():
    gt = [[0, 0, 10, 10], [20, 20, 30, 30]]
    assert B.correct([(3, [20, 20, 30, 31])], 3, gt)
    assert not B.correct([(4, [20, 20, 30, 31])], 3, gt)
    assert not B.correct([(3, [0, 0, 10, 20])], 3, gt)  # IoU exactly 0.5 is not > 0.5
    assert B.correct([(1, [0, 0, 1, 1]), (3, [0, 0, 10, 19])], 3, gt)
