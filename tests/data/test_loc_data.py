"""Localisation data: box lists and VOC XML -> LMDB with boxes; Data/ImageData's third top "box"."""
import os

import cv2
import numpy as np
import pytest

import vggtool
from data_prep.cli import main as data_prep
from vggtool.data.datum import iterate_records
from vggtool.io.prototxt import parse_net_text


def rectangle_image(h, w, box):
    """A black h x w image with the pixels inside the box (integer x1 y1 x2 y2) white."""
    image = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return image


@pytest.fixture
def boxed(tmp_path):
    """Two 20x40 PNGs with a white rectangle exactly where their first box is; a box list."""
    rows = [("a.png", 3, (8, 4, 24, 12), (30, 0, 40, 20)), ("b.png", 1, (2, 6, 38, 18), None)]
    lines = []
    for name, label, box, extra in rows:
        cv2.imwrite(str(tmp_path / name), rectangle_image(20, 40, box))
        fields = [name, str(label)] + [str(v) for v in box] + ([str(v) for v in extra] if extra else [])
        lines.append(" ".join(fields))
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_convert_imageset_stores_boxes_and_rescales_them(boxed):
    assert data_prep(["convert_imageset", str(boxed), str(boxed / "list.txt"), str(boxed / "db"),
                      "--resize_smallest", "10"]) == 0
    recs = {k.decode()[9:]: d for k, d in iterate_records(str(boxed / "db"))}
    # 20x40 -> 10x20: every coordinate halves.
    assert (recs["a.png"].height, recs["a.png"].width, recs["a.png"].label) == (10, 20, 3)
    np.testing.assert_allclose(recs["a.png"].box, [4, 2, 12, 6, 15, 0, 20, 10])
    np.testing.assert_allclose(recs["b.png"].box, [1, 3, 19, 9])


def loc_net(kind, source, transform, phase="TEST", batch=2, extra=""):
    param = (f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }}' if kind == "Data"
             else f'image_data_param {{ source: "{source}" batch_size: {batch} {extra} }}')
    text = (f'layer {{ name: "data" type: "{kind}" top: "data" top: "label" top: "box" {param} '
            f'transform_param {{ {transform} }} }}')
    return vggtool.Net(parse_net_text(text), phase=phase, seed=3)


def test_box_top_centre_crop_hand_computed(boxed):
    assert data_prep(["convert_imageset", str(boxed), str(boxed / "list.txt"), str(boxed / "db")]) == 0
    out = loc_net("Data", boxed / "db", "crop_size: 16").forward()
    # 20x40 image, centred 16x16 crop at x 12, y 2. Box a (8,4,24,12) -> (-4,2,12,10), not clipped:
    # cx 4/16, cy 6/16, w 16/16, h 8/16. Box b (2,6,38,18) -> (-10,4,26,16): cx 8/16, cy 10/16, w 36/16, h 12/16.
    np.testing.assert_allclose(out["box"], [[4 / 16, 6 / 16, 1, 8 / 16], [0.5, 10 / 16, 36 / 16, 12 / 16]])
    np.testing.assert_array_equal(out["label"], [3, 1])


@pytest.mark.parametrize("kind", ["Data", "ImageData"])
def test_box_top_follows_random_crop_mirror_and_rescale(boxed, kind):
    """In TRAIN, every sample's box must frame the white pixels of its own (cropped, mirrored) input."""
    if kind == "Data":
        assert data_prep(["convert_imageset", str(boxed), str(boxed / "list.txt"), str(boxed / "db")]) == 0
        source = boxed / "db"
    else:
        source = boxed / "list.txt"
    for transform, tol in (("crop_size: 16 mirror: true", 1e-6),
                           ("crop_size: 16 mirror: true smallest_side_min: 20 smallest_side_max: 30", 1.01)):
        net = loc_net(kind, source, transform, phase="TRAIN", batch=4,
                      extra=f'root_folder: "{boxed}/"')
        flips = set()
        for t in range(6):
            net.iteration = t
            out = net.forward()
            for data, box in zip(out["data"], out["box"]):
                ys, xs = np.nonzero(data[0] > 127)
                # The target is not clipped; the white pixels are its part inside the crop.
                x1, y1, x2, y2 = np.clip(vggtool.data.boxes.from_cxcywh(box[None], 16, 16)[0], 0, 16)
                if len(xs) == 0:
                    assert min(x2 - x1, y2 - y1) <= tol
                    continue
                np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [x1, y1, x2, y2],
                                           atol=tol)
                flips.add(round(float(box[0]), 3))
        assert len(flips) > 2  # crops and mirrors moved the box around


def test_missing_box_and_bad_box_list_are_errors(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "plain.txt").write_text("a.png 0\n")
    with pytest.raises(vggtool.errors.VggtoolError, match="has no bounding box"):
        loc_net("ImageData", tmp_path / "plain.txt", "", extra=f'root_folder: "{tmp_path}/"').forward()
    (tmp_path / "bad.txt").write_text("a.png 0 5 1 2 3\n")
    assert data_prep(["convert_imageset", str(tmp_path), str(tmp_path / "bad.txt"), str(tmp_path / "db")]) == 1


VOC = """<annotation><folder>VOC</folder><filename>{name}</filename>
<size><width>40</width><height>20</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = "<object><name>{cls}</name><bndbox><xmin>{0}</xmin><ymin>{1}</ymin><xmax>{2}</xmax><ymax>{3}</ymax></bndbox></object>"


def test_convert_voc(tmp_path, capsys):
    ann, img = tmp_path / "Annotations", tmp_path / "JPEGImages"
    ann.mkdir(), img.mkdir()
    objects = {"x1": [("dog", (9, 5, 24, 12)), ("cat", (1, 1, 4, 4)), ("dog", (31, 1, 40, 20))],
               "x2": [("cat", (3, 7, 38, 18))]}
    for image_id, objs in objects.items():
        cv2.imwrite(str(img / f"{image_id}.png"), np.zeros((20, 40, 3), np.uint8))
        body = "".join(OBJ.format(*b, cls=c) for c, b in objs)
        (ann / f"{image_id}.xml").write_text(VOC.format(name=f"{image_id}.png", objects=body))
    (tmp_path / "train.txt").write_text("x1\nx2\n")
    assert data_prep(["convert_voc", str(ann), str(img), str(tmp_path / "train.txt"), str(tmp_path / "db")]) == 0
    assert "0 cat, 1 dog" in capsys.readouterr().out
    recs = {k.decode()[9:]: d for k, d in iterate_records(str(tmp_path / "db"))}
    # First object's class; every box of that class; 1-based inclusive -> continuous (xmin - 1, xmax).
    assert recs["x1.png"].label == 1
    np.testing.assert_allclose(recs["x1.png"].box, [8, 4, 24, 12, 30, 0, 40, 20])
    assert recs["x2.png"].label == 0
    np.testing.assert_allclose(recs["x2.png"].box, [2, 6, 38, 18])
    (tmp_path / "labels.txt").write_text("dog\n")
    assert data_prep(["convert_voc", str(ann), str(img), "-", str(tmp_path / "db2"),
                      "--labels", str(tmp_path / "labels.txt")]) == 1
    assert "class 'cat' is not in --labels" in capsys.readouterr().err
