"""vggtool localize --draw: the true and predicted boxes on the images."""
import cv2
import numpy as np

from test_localize import const_net, write_set
from vggtool.vgg.box_pictures import GUESS_COLOUR, TRUE_COLOUR, draw_boxes
from vggtool.cli import main


def test_draw_boxes_puts_the_rectangles_where_the_boxes_are():
    image = np.zeros((40, 50, 3), np.uint8)
    out = draw_boxes(image, [[10, 5, 30, 25]], [(1, np.array([20, 10, 45, 35]))], 1, correct=False)
    assert out.shape == (44, 54, 3)  # a 2-pixel frame
    inner = out[2:-2, 2:-2]
    assert tuple(inner[5, 15]) == TRUE_COLOUR and tuple(inner[24, 15]) == TRUE_COLOUR  # top and bottom edges
    assert tuple(inner[15, 10]) == TRUE_COLOUR and tuple(inner[15, 29]) == TRUE_COLOUR
    assert tuple(inner[20, 44]) == GUESS_COLOUR  # right edge of the guess
    assert tuple(inner[15, 15]) == (0, 0, 0)  # inside stays the image
    assert tuple(out[0, 0]) == GUESS_COLOUR  # red frame: not localised
    assert tuple(draw_boxes(image, [], [], 0, correct=True)[0, 0]) == TRUE_COLOUR


def test_localize_draw_writes_one_picture_per_image(tmp_path, capsys):
    listing = write_set(tmp_path)
    net, weights = const_net(tmp_path, [[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 1, 1]])
    out = tmp_path / "drawn"
    assert main(["localize", "--net", net, "--weights", weights, "--data", str(listing), "--root", str(tmp_path),
                 "--scales", "12", "--protocol", "centre", "--draw", str(out)]) == 0
    pictures = sorted(p.name for p in out.iterdir())
    assert pictures == ["i0.png", "i1.png", "i2.png"]
    # image 1 is localised (green frame), image 0 is not (red frame)
    assert tuple(cv2.imread(str(out / "i1.png"))[0, 0]) == TRUE_COLOUR
    assert tuple(cv2.imread(str(out / "i0.png"))[0, 0]) == GUESS_COLOUR
