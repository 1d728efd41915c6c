"""`--data` as samples: the image sets the test-time commands (test, classify's --data, extract,
localize, reproduce) read one image at a time, from an LMDB of Datum, an image list (+ --root folder) or a
folder of images (vggtool.data.imagefolder). Keys: the LMDB key or the list's path, so score files of
several commands and models match.
"""
import os

import cv2
import numpy as np

from ..errors import VggtoolError
from .datum import datum_to_image, is_lmdb, iterate_records, shared_lmdb
from .imagefolder import folder_entries, is_image_folder
from .imagelist import read_box_list, read_image_list_lines


def count_samples(path):
    """The number of samples of a folder of images, an LMDB or an image list."""
    if is_image_folder(path):
        return len(folder_entries(path)[0])
    if is_lmdb(path):
        return shared_lmdb(path).stat()["entries"]  # shared: a data layer may hold it open
    return len(read_list(path))


def read_list(path):
    """[(relative path, label, line number)] of an image list `path label` (label optional)."""
    return read_image_list_lines(path, require_label=False)


def iterate_lmdb_images(path, limit=None, color=True):
    """Yield (key, HxWxC image, Datum) from the LMDB at `path` (`--data`), at most `limit` records."""
    if not is_lmdb(path):
        raise VggtoolError(f"--data: {path} is a folder without data.mdb (not an LMDB database)")
    for count, (key, datum) in enumerate(iterate_records(path)):
        if limit is not None and count >= limit:
            return
        k = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        yield k, datum_to_image(datum, color=color, source=f"{path}:{k}"), datum


def read_image_file(root, name, color, where):
    """The image `name` under `root` as HxWxC BGR (or gray) uint8; `where` names the list line in errors."""
    file = os.path.join(root, name) if root else name
    image = cv2.imread(file, cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise VggtoolError(f"{where}: cannot read image {file} (missing file or wrong --root?)")
    return image


def iterate_samples(path, root="", limit=None, color=True):
    """Yield (key, HxWxC BGR uint8 image, label) from an LMDB of Datum or a list file + root folder
    (`color`: 3-channel BGR, else 1-channel gray)."""
    if not os.path.exists(path):
        raise VggtoolError(f"--data: {path} does not exist (give an LMDB folder or an image list file)")
    if is_image_folder(path):  # ImageFolder layout: labels from the sorted class subfolders
        entries, classes = folder_entries(path)
        if classes is None:
            raise VggtoolError(f"--data: {path} holds images but no class subfolders, so no labels to score "
                               "against (ROOT/<class>/<image>; `vggtool classify` takes unlabelled images)")
        for count, (name, label) in enumerate(entries):
            if limit is not None and count >= limit:
                return
            yield name, read_image_file(path, name, color, f"{path}"), label
        return
    if os.path.isdir(path):
        for key, image, datum in iterate_lmdb_images(path, limit, color):
            yield key, image, int(datum.label)
        return
    for count, (name, label, n) in enumerate(read_list(path)):
        if limit is not None and count >= limit:
            return
        yield name, read_image_file(root, name, color, f"{path}:{n}"), label


def iterate_boxed_samples(path, root="", limit=None, color=True):
    """Yield (key, HxWxC uint8 image, label, boxes (k, 4)) from an LMDB of Datum with `box` or a box
    list `path label x1 y1 x2 y2 ...` (+ root folder). Keys as iterate_samples' (scores files match).
    A folder of images (class subfolders, or images alone: label -1) has no boxes: boxes is None."""
    if not os.path.exists(path):
        raise VggtoolError(f"--data: {path} does not exist (give an LMDB folder, a box list file or a folder "
                           "of images)")
    if is_image_folder(path):
        entries, _ = folder_entries(path)
        for name, label in entries[:limit]:
            yield name, read_image_file(path, name, color, f"--data {path}"), label, None
        return
    if os.path.isdir(path):
        for k, image, datum in iterate_lmdb_images(path, limit, color):
            if len(datum.box) == 0 or len(datum.box) % 4:
                raise VggtoolError(f"--data: record {k} of {path} has {len(datum.box)} box values; localisation "
                                   "needs ground-truth boxes (convert with a box list or convert_voc)")
            yield k, image, int(datum.label), np.asarray(datum.box, np.float64).reshape(-1, 4)
        return
    for count, (name, label, boxes) in enumerate(read_box_list(path)):
        if limit is not None and count >= limit:
            return
        if len(boxes) == 0:
            raise VggtoolError(f"--data: {path}: {name} has no box (lines read `path label x1 y1 x2 y2 ...`)")
        yield name, read_image_file(root, name, color, path), label, boxes


def iterate_image_set(image_set, color, limit=None):
    """Yield (key, image, labels tuple) from an ImageSet (image files or an LMDB)."""
    if image_set.lmdb is not None:
        for key, image, label in iterate_samples(image_set.lmdb, limit=limit, color=color):
            yield key, image, (label,)
        return
    for i, (key, file) in enumerate(zip(image_set.keys, image_set.files)):
        if limit is not None and i >= limit:
            return
        yield key, read_image_file("", file, color, image_set.source), image_set.labels[i]
