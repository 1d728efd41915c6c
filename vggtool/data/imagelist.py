"""Caffe image lists: one `relative/path label` per line (the label is the last field)."""
import os

from ..errors import VggtoolError


def read_image_list(path):
    """[(relative path, label)]; a malformed line is an error naming the file and line."""
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
                raise VggtoolError(f"{path}:{lineno}: expected `relative/path label`, got {line!r} (no label)")
            name, label = line[:pos].strip(), line[pos + 1:]
            try:
                entries.append((name, int(label)))
            except ValueError:
                raise VggtoolError(f"{path}:{lineno}: label {label!r} is not an integer") from None
    return entries
