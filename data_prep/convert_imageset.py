"""convert_imageset: an image list (`relative/path label` per line) -> an LMDB of Caffe Datum records.

Caffe's flags and record format: keys `%08d_<path>` in (possibly shuffled) list order, raw Datum
(C x H x W BGR bytes) or, with --encoded, the compressed file bytes. Additions: --resize_smallest
(isotropic), corrupt images skipped and listed (--strict: fatal), the database is built under a
temporary name beside DB and renamed when complete, and the LMDB map grows as needed.

Boxes (localisation): a list whose lines read `path label x1 y1 x2 y2 [x1 y1 x2 y2 ...]` (detected
automatically: some line ends with 5 or more numbers) stores the boxes in the Datum's `box` field,
4 floats per box in pixels of the STORED image (rescaled with it by --resize_*), continuous
coordinates as in vggtool.data.boxes. data_prep convert_voc feeds VOC/ILSVRC XML annotations through here.
"""
import os
import shutil
import time

import cv2
import numpy as np

from vggtool.data.datum import array_to_datum, encoded_datum, lmdb_for_writing, record_key
from vggtool.data import boxes as box_geometry
from vggtool.atomic_files import remove_stale_temporaries, temporary_folder
from vggtool.data.imagelist import list_has_boxes, read_box_list, read_image_list
from vggtool.data.transform import fixed_resize, isotropic_resize
from vggtool.errors import VggtoolError
from vggtool.io.files import check_output_path

HELP = "convert an image list (path label per line) to an LMDB of Caffe Datum records"

_ENCODINGS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg"}


def add_arguments(p):
    p.add_argument("root", help="folder the list's paths are relative to")
    p.add_argument("list", help="list file: `relative/path label [x1 y1 x2 y2 ...]` per line")
    p.add_argument("db", help="output database folder")
    add_common_arguments(p)


def add_common_arguments(p):
    """The flags convert_imageset shares with convert_voc."""
    p.add_argument("--backend", default="lmdb", help="database kind (only lmdb)")
    p.add_argument("--gray", action="store_true", help="store images as 1-channel grayscale")
    p.add_argument("--shuffle", action="store_true", help="shuffle the list (seeded) before writing")
    p.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default 0)")
    p.add_argument("--resize_height", type=int, default=0, help="resize to this height (with --resize_width)")
    p.add_argument("--resize_width", type=int, default=0, help="resize to this width (with --resize_height)")
    p.add_argument("--resize_smallest", type=int, default=0,
                   help="isotropic resize: the smaller side becomes N (keeps the aspect ratio)")
    p.add_argument("--check_size", action="store_true", help="fail unless all images have the same size")
    p.add_argument("--encoded", action="store_true", help="store the compressed image bytes")
    p.add_argument("--encode_type", default="", help="png or jpg: re-encode to this type (with --encoded)")
    p.add_argument("--strict", action="store_true", help="an unreadable image is fatal instead of skipped")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DB")
    p.add_argument("--map_size", type=int, default=1 << 28, help="initial LMDB map size in bytes (grows)")


def resize_image(image, height=0, width=0, smallest=0):
    """Caffe's fixed resize (both height and width given, bilinear as Caffe's) or the isotropic
    smaller-side resize of training and testing (vggtool.data.transform.isotropic_resize)."""
    if smallest:
        return isotropic_resize(image, smallest)
    if height and width:
        return fixed_resize(image, height, width)
    return image


def make_datum(path, label, args, boxes=None):
    """The Datum of one image file (with its boxes, moved with the resize); raises VggtoolError when the
    file cannot be read or decoded."""
    datum, shape, original = _make_datum(path, label, args)
    if boxes is not None and len(boxes):
        moved = box_geometry.resize_boxes(boxes, original, shape)
        datum.box.extend(np.asarray(moved, np.float32).reshape(-1).tolist())
    return datum, shape


def _make_datum(path, label, args):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise VggtoolError(f"cannot read {path}: {e.strerror}") from None
    flag = cv2.IMREAD_GRAYSCALE if args.gray else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), flag)
    if image is None:
        raise VggtoolError(f"cannot decode {path} (corrupt or not an image)")
    resized = resize_image(image, args.resize_height, args.resize_width, args.resize_smallest)
    shape, original = resized.shape[:2], image.shape[:2]
    if not args.encoded:
        return array_to_datum(resized, label), shape, original
    ext = os.path.splitext(path)[1].lower().replace(".jpeg", ".jpg")
    want = _ENCODINGS.get(args.encode_type.lower(), ext) if args.encode_type else ext
    # Keep the file's own bytes only when nothing about the pixels changes (Caffe does the same).
    if resized is image and want == ext and not args.gray:
        return encoded_datum(raw, label), shape, original
    ok, buf = cv2.imencode(want if want in (".png", ".jpg") else ".png", resized)
    if not ok:
        raise VggtoolError(f"cannot encode {path} as {want}")
    return encoded_datum(buf.tobytes(), label), shape, original


class LmdbWriter:
    """Batched LMDB puts; on MapFullError the map size doubles and the transaction is retried."""

    def __init__(self, path, map_size, batch=256):
        import lmdb

        self.lmdb = lmdb
        self.env = lmdb_for_writing(path, map_size)
        self.pending = []
        self.batch = batch

    def put(self, key, value):
        self.pending.append((key, value))
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self):
        while self.pending:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self.pending:
                        txn.put(key, value)
                self.pending = []
            except self.lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def close(self):
        self.flush()
        self.env.sync()
        self.env.close()


def is_replaceable_lmdb(path):
    """--overwrite deletes the old database: only a folder holding nothing but LMDB's two files."""
    names = set(os.listdir(path))
    return "data.mdb" in names and names <= {"data.mdb", "lock.mdb"}


def run(args):
    if list_has_boxes(args.list):
        entries = read_box_list(args.list)
    else:
        entries = [(name, label, None) for name, label in read_image_list(args.list)]
    return convert(entries, args, args.list)


def convert(entries, args, list_name):
    """Write [(relative path, label, boxes or None)] (paths under args.root) to args.db."""
    from vggtool.progress import progress

    if args.backend.lower() != "lmdb":
        raise VggtoolError(f"--backend {args.backend}: only lmdb is supported (convert LevelDB data with Caffe "
                           "or re-create it from the images with --backend lmdb)")
    if args.encode_type and args.encode_type.lower() not in _ENCODINGS:
        raise VggtoolError(f"--encode_type {args.encode_type}: use png or jpg")
    for flag in ("resize_smallest", "resize_height", "resize_width"):
        if getattr(args, flag) < 0:  # a negative size would become a 1x1 (or a cv2.error) image
            raise VggtoolError(f"--{flag} must be a positive size in pixels (0: no resize), got {getattr(args, flag)}")
    if (args.resize_height > 0) != (args.resize_width > 0):
        raise VggtoolError("--resize_height and --resize_width go together (or use --resize_smallest)")
    if args.resize_smallest and args.resize_height:
        raise VggtoolError("--resize_smallest and --resize_height/--resize_width exclude each other")
    if not os.path.isdir(args.root):
        raise VggtoolError(f"image root folder not found: {args.root}")
    if not entries:
        raise VggtoolError(f"{list_name}: the list is empty")
    db = os.path.normpath(args.db)
    check_output_path(db, "output database", folder=True)
    if os.path.exists(db) and not args.overwrite:
        raise VggtoolError(f"{db} already exists (pass --overwrite to replace it)")
    if os.path.exists(db) and not is_replaceable_lmdb(db):
        raise VggtoolError(f"{db} is not an LMDB database (it holds other files than data.mdb and lock.mdb); "
                           "--overwrite replaces only a database")
    if args.shuffle:
        order = np.random.default_rng(args.seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    print(f"A total of {len(entries)} images.")

    remove_stale_temporaries(db)  # what a killed conversion left
    tmp = temporary_folder(db)
    shutil.rmtree(tmp, ignore_errors=True)
    writer = LmdbWriter(tmp, args.map_size)
    skipped, first_shape, count, start = [], None, 0, time.time()
    try:
        bar = progress(entries, unit="img", desc="convert_imageset", mininterval=0.5)
        for line_id, (name, label, boxes) in enumerate(bar):
            try:
                datum, shape = make_datum(os.path.join(args.root, name), label, args, boxes)
            except VggtoolError as e:
                if args.strict:
                    raise VggtoolError(f"{e} (listed in {list_name}; --strict makes this fatal)") from None
                skipped.append(f"{name}: {e}")
                continue
            if args.check_size:
                if first_shape is None:
                    first_shape = shape
                elif shape != first_shape:
                    raise VggtoolError(f"--check_size: {name} is {shape[0]}x{shape[1]}, the first image was "
                                       f"{first_shape[0]}x{first_shape[1]}")
            # Caffe keys by the position in the (shuffled) list, so a skipped image leaves a gap.
            writer.put(record_key(line_id, name), datum.SerializeToString())
            count += 1
        writer.close()
        if count == 0:
            raise VggtoolError(f"no image of {list_name} could be read; nothing written")
        old = None
        if os.path.exists(db):  # --overwrite: move the old DB aside first, so a DB exists at every moment
            old = tmp + ".old"
            os.replace(db, old)
        os.replace(tmp, db)
        if old:
            shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
    except BaseException:
        writer.env.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    rate = count / max(time.time() - start, 1e-9)
    print(f"Processed {count} files ({rate:.0f} images/s) into {db}.")
    if skipped:
        print(f"Skipped {len(skipped)} unreadable image(s):")
        for line in skipped:
            print(f"  {line}")
    return 0
