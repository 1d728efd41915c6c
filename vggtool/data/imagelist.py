"""List files, the one grammar of every dataset reader (ImageData, convert_imageset, convert_voc,
test/classify/extract/localize --data, --labels and --classes files).

A list file is UTF-8 lines; blank lines and lines starting with '#' are skipped. A line is a path (or a
name) followed by trailing fields separated by whitespace. The trailing fields are read from the END of
the line, so a path may hold spaces and keeps them as written (Caffe's ImageData splits at the last
space). What the trailing fields are depends on the file:

- one label      `relative/path label`: an integer (classification lists); optional for images to
                 classify rather than score, which get label 0;
- labels         `relative/path l1 l2 ...`: zero or more class indices >= 0 (multi-label image sets);
- label, boxes   `relative/path label [x1 y1 x2 y2 ...]`: of the trailing numbers, the last 4k are k boxes
                 (continuous pixel coordinates, see vggtool.boxes) and the one before them the label;
- names          one name a line (class names, synset words, image ids): the whole line, or only its
                 first field.

Numbers are ASCII (as C's atoi and strtod read Caffe's lists, not Python's int and float): an integer
is digits with an optional sign, so "1_0" is no label. Every error names the file and the line.
"""
import os
import re

import numpy as np

from ..errors import VggtoolError

_INTEGER = re.compile(r"[+-]?[0-9]+")
# nan and inf count as numbers, so that a box holding one is an error rather than part of the path
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:nan|inf|infinity)", re.I)


def is_integer(token):
    return _INTEGER.fullmatch(token) is not None


def _is_number(token):
    return _NUMBER.fullmatch(token) is not None


def list_lines(path, what="list file"):
    """[(line number, stripped text)] of the lines of `path` that hold something."""
    if not os.path.isfile(path):
        raise VggtoolError(f"{what} not found: {path}")
    out = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise VggtoolError(f"{path}:{lineno}: not UTF-8 text (is this a list file?)") from None
            if text and not text.startswith("#"):
                out.append((lineno, text))
    return out


def split_trailing(text, count):
    """(path, [the last `count` fields]) of a line; the path keeps its inner spaces."""
    if count == 0:
        return text, []
    parts = text.rsplit(None, count)
    return parts[0], parts[1:]


def _label(path, lineno, token):
    if not is_integer(token):
        raise VggtoolError(f"{path}:{lineno}: label {token!r} is not an integer")
    return int(token)


def read_image_list_lines(path, require_label=True):
    """[(relative path, label, line number)] of a one-label list.

    Without `require_label`, a line holding only a path gets label 0 (images to classify, not to score).
    """
    entries = []
    for lineno, text in list_lines(path):
        name, tail = split_trailing(text, 1)
        if not tail:
            if require_label:
                raise VggtoolError(f"{path}:{lineno}: expected `relative/path label`, got {text!r} (no label)")
            entries.append((name, 0, lineno))
            continue
        entries.append((name, _label(path, lineno, tail[0]), lineno))
    return entries


def read_image_list(path):
    """[(relative path, label)] of a Caffe image list."""
    return [(name, label) for name, label, _ in read_image_list_lines(path)]


def read_labelled_list(path):
    """[(path, (labels...), line number)] of a multi-label list `path l1 l2 ...` (no label: an
    unlabelled image)."""
    out = []
    for lineno, text in list_lines(path):
        tokens = text.split()
        k = len(tokens)
        while k > 1 and is_integer(tokens[k - 1]):
            k -= 1
        name, tail = split_trailing(text, len(tokens) - k)
        labels = tuple(int(t) for t in tail)
        if any(v < 0 for v in labels):
            raise VggtoolError(f"{path}:{lineno}: labels must be class indices >= 0, got '{text}'")
        out.append((name, labels, lineno))
    return out


def read_box_list(path):
    """[(relative path, label, boxes (k, 4) float64)] of a list `relative/path label [x1 y1 x2 y2 ...]`
    (continuous pixel coordinates, see vggtool.data.boxes). A line with fewer than 5 trailing numbers has
    no box (k = 0)."""
    entries = []
    for lineno, text in list_lines(path):
        fields = text.split()
        numeric = 0
        while numeric < len(fields) - 1 and _is_number(fields[-1 - numeric]):
            numeric += 1
        if numeric == 0:
            raise VggtoolError(f"{path}:{lineno}: expected `relative/path label [x1 y1 x2 y2 ...]`, got {text!r}")
        k = (numeric - 1) // 4
        name, tail = split_trailing(text, 1 + 4 * k)
        label = _label(path, lineno, tail[0])
        boxes = np.array([float(v) for v in tail[1:]]).reshape(-1, 4)
        if not np.isfinite(boxes).all():
            raise VggtoolError(f"{path}:{lineno}: box coordinates must be finite numbers, got {tail[1:]}")
        bad = boxes[(boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])]
        if len(bad):
            raise VggtoolError(f"{path}:{lineno}: box {bad[0].tolist()} is empty: boxes are x1 y1 x2 y2 "
                               "with x2 > x1 and y2 > y1")
        entries.append((name, label, boxes))
    return entries


def list_has_boxes(path):
    """True when some line of the list ends with 5 or more numbers (label + x1 y1 x2 y2)."""
    if not os.path.isfile(path):
        return False  # the reader reports the missing file
    for _, text in list_lines(path):
        fields = text.split()
        if len(fields) >= 6 and all(_is_number(v) for v in fields[-5:]):
            return True
    return False


def read_names(path, what="labels file", first_field=False, distinct=True):
    """The names of a file with one name a line (the whole line, or its first field), in file order."""
    names, seen = [], {}
    for lineno, text in list_lines(path, what):
        name = text.split()[0] if first_field else text
        if distinct and name in seen:
            raise VggtoolError(f"{path}:{lineno}: the name {name!r} appears twice (first on line {seen[name]})")
        seen.setdefault(name, lineno)
        names.append(name)
    return names
