"""Caffe image lists: one `relative/path label` per line (the label is the last field)."""
import os

from ..errors import VggtoolError


def read_image_list_lines(path, require_label=True):
    """[(relative path, label, line number)]; a malformed line is an error naming the file and line.

    Without `require_label`, a line holding only a path gets label 0 (images to classify, not to score).
    """
    if not os.path.isfile(path):
        raise VggtoolError(f"list file not found: {path}")
    entries = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            # The label is the last field, so paths may contain spaces (Caffe splits at the last space).
            pos = line.rfind(" ")
            if pos < 0:
                if require_label:
                    raise VggtoolError(f"{path}:{lineno}: expected `relative/path label`, got {line!r} (no label)")
                entries.append((line, 0, lineno))
                continue
            name, label = line[:pos].strip(), line[pos + 1:]
            try:
                entries.append((name, int(label), lineno))
            except ValueError:
                raise VggtoolError(f"{path}:{lineno}: label {label!r} is not an integer") from None
    return entries


def read_image_list(path):
    """[(relative path, label)] of a Caffe image list."""
    return [(name, label) for name, label, _ in read_image_list_lines(path)]
def _is_number(token):
    try:
        float(token)
        return True
    except ValueError:
        return False


def read_box_list(path):
    """[(relative path, label, boxes (k, 4) float64)] from a list with boxes:
    `relative/path label x1 y1 x2 y2 [x1 y1 x2 y2 ...]` (continuous pixel coordinates, see
    vggtool.data.boxes). A line is read from its end: of its trailing numeric fields the last 4k are boxes
    and the one before them the label, so a line with fewer than 5 numbers has no box (k = 0)."""
    import numpy as np

    if not os.path.isfile(path):
        raise VggtoolError(f"list file not found: {path}")
    entries = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            numeric = 0
            while numeric < len(fields) - 1 and _is_number(fields[-1 - numeric]):
                numeric += 1
            if numeric == 0:
                raise VggtoolError(f"{path}:{lineno}: expected `relative/path label [x1 y1 x2 y2 ...]`, "
                                   f"got {line.strip()!r}")
            k = (numeric - 1) // 4
            label_field = fields[-1 - 4 * k]
            try:
                label = int(label_field)
            except ValueError:
                raise VggtoolError(f"{path}:{lineno}: label {label_field!r} is not an integer") from None
            boxes = np.array([float(v) for v in fields[len(fields) - 4 * k:]]).reshape(-1, 4)
            bad = boxes[(boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])]
            if len(bad):
                raise VggtoolError(f"{path}:{lineno}: box {bad[0].tolist()} is empty: boxes are x1 y1 x2 y2 "
                                   "with x2 > x1 and y2 > y1")
            entries.append((" ".join(fields[:len(fields) - 1 - 4 * k]), label, boxes))
    return entries
