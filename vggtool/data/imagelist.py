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
