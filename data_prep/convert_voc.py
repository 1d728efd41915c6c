"""convert_voc: PASCAL VOC / ILSVRC CLS-LOC XML annotations + images -> an LMDB of Datum with boxes.

    data_prep convert_voc ROOT/Annotations ROOT/JPEGImages LIST DB [--labels classes.txt] [flags]

LIST names the images, one id per line (VOC's ImageSets/Main/*.txt; a `path label` list works too,
only the first field is used); `-` takes every .xml file of the annotation folder, sorted. For each
id, ANNOTATIONS/<id>.xml gives the objects (<object><name>, <bndbox> xmin ymin xmax ymax, 1-based
inclusive pixels, stored as x1 = xmin - 1, x2 = xmax: the continuous coordinates of vggtool.data.boxes)
and the image IMAGES/<filename> (<filename> of the XML, else <id>.JPEG/.jpg). The record's label is
the class of the FIRST object (ILSVRC localisation: one class per image) and its boxes are all the
objects of that class. --labels: class names (e.g. synset ids) one per line, label = line number
from 0; without it, the sorted names found in the annotations (printed). Other flags as
convert_imageset (--resize_smallest moves the boxes with the image).
"""
import os
import xml.etree.ElementTree as ET

import numpy as np

from vggtool.data.imagelist import read_names
from vggtool.errors import VggtoolError

from . import convert_imageset

HELP = "convert VOC/ILSVRC XML box annotations and their images to an LMDB of Datum with boxes"


def add_arguments(p):
    p.add_argument("annotations", help="folder of <id>.xml annotation files")
    p.add_argument("root", help="image folder (the XML <filename> is relative to it)")
    p.add_argument("list", help="image ids, one per line (`-`: every .xml of the annotation folder)")
    p.add_argument("db", help="output database folder")
    p.add_argument("--labels", default="", help="class names one per line (label = line index, from 0)")
    convert_imageset.add_common_arguments(p)


def _text(node, tag, path):
    child = node.find(tag)
    if child is None or child.text is None:
        raise VggtoolError(f"{path}: <{node.tag}> has no <{tag}>")
    return child.text.strip()


def read_annotation(path):
    """(filename or None, [(class name, [x1, y1, x2, y2])]) of one VOC-style XML file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise VggtoolError(f"{path}: cannot read the annotation: {e}") from None
    filename = root.findtext("filename")
    objects = []
    for obj in root.iter("object"):
        name = _text(obj, "name", path)
        box = obj.find("bndbox")
        if box is None:
            raise VggtoolError(f"{path}: object '{name}' has no <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(_text(box, t, path)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise VggtoolError(f"{path}: object '{name}': a <bndbox> coordinate is not a number") from None
        if xmax < xmin or ymax < ymin:
            raise VggtoolError(f"{path}: object '{name}': empty box xmin {xmin} xmax {xmax} ymin {ymin} ymax {ymax}")
        objects.append((name, [xmin - 1, ymin - 1, xmax, ymax]))
    return (filename.strip() if filename else None), objects


def read_ids(list_path, annotations):
    if list_path == "-":
        return sorted(f[:-4] for f in os.listdir(annotations) if f.endswith(".xml"))
    return read_names(list_path, "list file", first_field=True, distinct=False)


def voc_entries(annotations, root, ids, labels=None):
    """([(image path relative to root, label, boxes (k, 4))], class names)."""
    if not os.path.isdir(annotations):
        raise VggtoolError(f"annotation folder not found: {annotations}")
    parsed = []
    for image_id in ids:
        path = os.path.join(annotations, image_id + ".xml")
        if not os.path.isfile(path):
            raise VggtoolError(f"no annotation {path} for image id '{image_id}'")
        filename, objects = read_annotation(path)
        if not objects:
            raise VggtoolError(f"{path}: no <object>; localisation records need a box")
        if filename is None or not os.path.exists(os.path.join(root, filename)):
            for ext in (".JPEG", ".jpg", ".jpeg", ".png"):
                if os.path.exists(os.path.join(root, image_id + ext)):
                    filename = image_id + ext
                    break
            else:
                filename = filename or image_id + ".jpg"  # reported as unreadable by the conversion
        parsed.append((filename, objects, path))
    names = labels if labels is not None else sorted({n for _, objs, _ in parsed for n, _ in objs})
    index = {n: i for i, n in enumerate(names)}
    entries = []
    for filename, objects, path in parsed:
        cls = objects[0][0]
        if cls not in index:
            raise VggtoolError(f"{path}: class '{cls}' is not in --labels")
        boxes = np.array([b for n, b in objects if n == cls], dtype=np.float64)
        entries.append((filename, index[cls], boxes))
    return entries, names


def run(args):
    labels = None
    if args.labels:
        if not os.path.isfile(args.labels):
            raise VggtoolError(f"--labels: {args.labels} not found")
        labels = read_names(args.labels, first_field=True)
    if not os.path.isdir(args.root):
        raise VggtoolError(f"image root folder not found: {args.root}")
    entries, names = voc_entries(args.annotations, args.root, read_ids(args.list, args.annotations), labels)
    if labels is None:
        print("Labels: " + ", ".join(f"{i} {n}" for i, n in enumerate(names)))
    return convert_imageset.convert(entries, args, args.list)
