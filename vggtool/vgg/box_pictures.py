"""Pictures of localisation results (`vggtool localize --draw DIR`): the ground-truth boxes in green, the
guesses in red (the first guess thick, later ones thin), each labelled with its class, and a frame that
is green when the image counts as localised, red when not.

Boxes are vggtool.data.boxes' continuous pixel coordinates (x1, y1, x2, y2); pixel (i, j) covers
[j, j+1) x [i, i+1), so the drawn rectangle runs over pixels x1 .. x2 - 1 (rounded)."""
import os

import cv2
import numpy as np

from .heatmaps import picture_name
from ..atomic_files import atomic_write_bytes

TRUE_COLOUR = (0, 200, 0)   # BGR
GUESS_COLOUR = (0, 0, 255)


def _pixel_rect(box, w, h):
    x1, y1, x2, y2 = (float(v) for v in box)
    a = (int(np.clip(round(x1), 0, w - 1)), int(np.clip(round(y1), 0, h - 1)))
    b = (int(np.clip(round(x2) - 1, 0, w - 1)), int(np.clip(round(y2) - 1, 0, h - 1)))
    return a, b


def draw_boxes(image, true_boxes, guesses, label, correct, names=None):
    """A BGR copy of `image` with the boxes drawn; `guesses`: [(class, box)] best first."""
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    font = max(0.3, min(h, w) / 500)

    def name(c):
        return names[c] if names and 0 <= c < len(names) else str(c)

    for box in np.asarray(true_boxes).reshape(-1, 4):
        a, b = _pixel_rect(box, w, h)
        cv2.rectangle(out, a, b, TRUE_COLOUR, 2 if min(h, w) > 64 else 1)
        cv2.putText(out, name(label), (a[0] + 2, min(h - 2, b[1] - 2)), cv2.FONT_HERSHEY_SIMPLEX, font,
                    TRUE_COLOUR, 1, cv2.LINE_AA)
    for rank, (cls, box) in enumerate(guesses):
        a, b = _pixel_rect(box, w, h)
        cv2.rectangle(out, a, b, GUESS_COLOUR, (2 if min(h, w) > 64 else 1) if rank == 0 else 1)
        cv2.putText(out, name(int(cls)), (a[0] + 2, a[1] + int(12 * font) + 2), cv2.FONT_HERSHEY_SIMPLEX, font,
                    GUESS_COLOUR, 1, cv2.LINE_AA)
    frame = (128, 128, 128) if correct is None else TRUE_COLOUR if correct else GUESS_COLOUR  # grey: no truth
    return cv2.copyMakeBorder(out, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=frame)


def write_box_picture(folder, key, picture):
    """Write `picture` as folder/<key>.png (see heatmaps.picture_name), atomically; return the path."""
    os.makedirs(folder, exist_ok=True)
    ok, png = cv2.imencode(".png", picture)
    path = os.path.join(folder, picture_name(key))
    atomic_write_bytes(path, png.tobytes())
    return path
