"""Image sets with labels for feature extraction: Caffe image lists (one or several labels per image),
LMDB of Datum (one label) and PASCAL VOC folders (multi-label, from the annotations).

List lines are `path l1 l2 ...` (vggtool.data.imagelist: the trailing integer tokens are the labels, the
rest is the path, so a path may hold spaces). A line with no label gets none (an unlabelled image).

VOC folder (e.g. VOCdevkit/VOC2007): ImageSets/Main/<split>.txt names the images, JPEGImages/<id>.jpg
holds them, Annotations/<id>.xml lists <object><name>; an image is positive for a class when it holds a
non-difficult object of it. As in the VOC devkit, an image whose only objects of a class are `difficult`
is neither positive nor negative for it: it is marked in `ignore` and left out of that class's AP.
Classes are the sorted object names found, or the list given (--classes). The dataset's name (e.g.
VOC2007, whose devkit uses 11-point AP) is the annotations' <folder>, else the folder's own name.
"""
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np

from ..errors import VggtoolError
from .imagelist import read_labelled_list, read_names


@dataclass
class ImageSet:
    """What to extract: keys, and either image files or an LMDB to stream; labels per image."""
    source: str
    keys: list
    files: list = None           # image paths (lists, VOC); None for an LMDB
    lmdb: str = None
    labels: list = field(default_factory=list)   # per image: a tuple of class indices
    classes: list = None         # class names when known (VOC, --classes)
    ignore: np.ndarray = None    # N x C bool (VOC difficult-only), or None
    multilabel: bool = False     # labels as N x C multi-hot even when each image has one label
    dataset: str = None          # e.g. "VOC2007" for a VOC folder (it picks the AP rule of `vggtool svm`)

    def __len__(self):
        return len(self.keys)


def is_voc(path):
    return os.path.isdir(os.path.join(path, "Annotations")) and os.path.isdir(os.path.join(path, "ImageSets"))


def parse_classes(text):
    """Class names from `a,b,c` or a file with one name per line; None for None."""
    if text is None:
        return None
    if os.path.isfile(text):
        names = read_names(text, "--classes file", distinct=False)  # duplicates: the message below
    else:
        names = [s.strip() for s in text.split(",") if s.strip()]
    if not names or len(set(names)) != len(names):
        raise VggtoolError(f"--classes: expected distinct class names (a,b,c or a file), got '{text}'")
    return names


def _voc_objects(xml_path):
    """[(name, difficult)] of the objects of one VOC annotation file."""
    if not os.path.exists(xml_path):
        raise VggtoolError(f"VOC annotation {xml_path} does not exist")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise VggtoolError(f"{xml_path}: not a valid annotation XML file: {e}") from None
    out = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise VggtoolError(f"{xml_path}: an <object> without <name>")
        out.append((name, (obj.findtext("difficult") or "0").strip() == "1"))
    return out


def voc_dataset_name(folder, ids):
    """"VOC2007"-style name: the first annotation's <folder> (as VOC writes it), else the folder's name."""
    if ids:
        try:
            name = (ET.parse(os.path.join(folder, "Annotations", f"{ids[0]}.xml")).getroot()
                    .findtext("folder") or "").strip()
        except (OSError, ET.ParseError):
            name = ""
        if name:
            return name
    return os.path.basename(os.path.normpath(folder))


def read_voc(folder, split="trainval", classes=None):
    ids_file = os.path.join(folder, "ImageSets", "Main", f"{split}.txt")
    if not os.path.exists(ids_file):
        raise VggtoolError(f"VOC split file {ids_file} does not exist (check --split)")
    ids = read_names(ids_file, "VOC split file", first_field=True, distinct=False)
    objects = [_voc_objects(os.path.join(folder, "Annotations", f"{i}.xml")) for i in ids]
    names = classes or sorted({name for objs in objects for name, _ in objs})
    index = {c: k for k, c in enumerate(names)}
    ignore = np.zeros((len(ids), len(names)), bool)
    labels = []
    for row, (i, objs) in enumerate(zip(ids, objects)):
        for name, _ in objs:
            if name not in index:
                raise VggtoolError(f"{os.path.join(folder, 'Annotations', i + '.xml')}: object class '{name}' "
                                   f"is not among --classes ({', '.join(names)})")
        pos = sorted({index[n] for n, difficult in objs if not difficult})
        labels.append(tuple(pos))
        for n, difficult in objs:
            if difficult and index[n] not in pos:
                ignore[row, index[n]] = True
    files = [os.path.join(folder, "JPEGImages", f"{i}.jpg") for i in ids]
    return ImageSet(folder, ids, files=files, labels=labels, classes=list(names),
                    ignore=ignore if ignore.any() else None, multilabel=True,
                    dataset=voc_dataset_name(folder, ids))


def open_image_set(data, root="", split="trainval", classes=None):
    """An ImageSet from a list file, an LMDB folder or a VOC folder (`--data`)."""
    from .datum import is_lmdb

    if not os.path.exists(data):
        raise VggtoolError(f"--data: {data} does not exist (give an image list file, an LMDB folder or a "
                           "VOC folder)")
    if root and not os.path.isdir(root):
        raise VggtoolError(f"--root: {root} is not a folder")
    if os.path.isdir(data):
        from .imagefolder import folder_entries, is_image_folder

        if is_image_folder(data) and not is_voc(data):  # ImageFolder layout, or a folder of images
            entries, names = folder_entries(data, classes)
            return ImageSet(data, [name for name, _ in entries],
                            files=[os.path.join(data, name) for name, _ in entries],
                            labels=[(label,) if label >= 0 else () for _, label in entries],
                            classes=names if names is not None else classes)
        if is_lmdb(data):
            return ImageSet(data, [], lmdb=data, classes=classes)
        if is_voc(data):
            return read_voc(data, split, classes)
        raise VggtoolError(f"--data: {data} is neither an LMDB (no data.mdb) nor a VOC folder (no "
                           "Annotations/ and ImageSets/)")
    entries = read_labelled_list(data)
    files = [os.path.join(root, name) if root else name for name, _, _ in entries]
    for (name, _, n), file in zip(entries, files):
        if not os.path.isfile(file):
            raise VggtoolError(f"{data}:{n}: image {file} does not exist (missing file or wrong --root?)")
    return ImageSet(data, [name for name, _, _ in entries], files=files,
                    labels=[labels for _, labels, _ in entries], classes=classes)


def label_array(labels, classes=None, multilabel=False, source="data"):
    """Labels as (N,) int64 (every image has exactly one label and not `multilabel`) or an N x C multi-hot
    uint8 matrix; C = number of classes given, else the highest label + 1."""
    multilabel = multilabel or any(len(v) != 1 for v in labels)
    top = max((max(v) for v in labels if v), default=-1)
    n_classes = len(classes) if classes is not None else top + 1
    if top >= n_classes:
        raise VggtoolError(f"{source}: label {top} is out of range for {n_classes} classes")
    if not multilabel:
        return np.array([v[0] for v in labels], np.int64)
    out = np.zeros((len(labels), n_classes), np.uint8)
    for row, v in enumerate(labels):
        out[row, list(v)] = 1
    return out
