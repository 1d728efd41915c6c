"""compute_image_mean: the mean image of an LMDB of Datum records, as a BlobProto 1 x C x H x W.

As Caffe's tool writes it, the shape is in the legacy num/channels/height/width fields (no `shape`), so
the usual `np.array(blob.data).reshape(blob.channels, blob.height, blob.width)` works.

As Caffe's tool, it also prints the per-channel means. Images of different sizes have no mean image:
--per_channel_only writes the 1 x C x 1 x 1 per-channel mean instead.
"""
import numpy as np

from vggtool.io.wire import set_proto_values
from vggtool.proto import caffe_pb2
from vggtool.data.datum import datum_to_image, iterate_records
from vggtool.errors import VggtoolError
from vggtool.io.files import check_output_path
from vggtool.io.wire import write_binary_proto

HELP = "compute the mean image (BlobProto 1xCxHxW) of an LMDB of Datum records"


def add_arguments(p):
    p.add_argument("db", help="input LMDB")
    p.add_argument("out", help="output .binaryproto")
    p.add_argument("--backend", default="lmdb", help="database kind (only lmdb)")
    p.add_argument("--per_channel_only", action="store_true",
                   help="write the per-channel mean (1xCx1x1); needed when image sizes differ")


def image_mean(db, per_channel_only=False):
    """(mean array 1xCxHxW or 1xCx1x1 as float64, number of images)."""
    total, count, shape = None, 0, None
    for key, datum in iterate_records(db):
        image = datum_to_image(datum, source=f"{db} record {key.decode(errors='replace')}").astype(np.float64)
        if per_channel_only:
            s = image.reshape(-1, image.shape[2]).mean(axis=0)
        else:
            if shape is None:
                shape = image.shape
            elif image.shape != shape:
                raise VggtoolError(f"{db}: record {key.decode(errors='replace')} is {image.shape[0]}x{image.shape[1]}"
                                   f"x{image.shape[2]} but the first was {shape[0]}x{shape[1]}x{shape[2]}; "
                                   "images of different sizes have no mean image (use --per_channel_only)")
            s = image
        if total is not None and s.shape != total.shape:
            raise VggtoolError(f"{db}: record {key.decode(errors='replace')} has {image.shape[2]} channel(s), "
                               f"earlier records {total.shape[-1]}")
        total = s.copy() if total is None else total + s
        count += 1
    if count == 0:
        raise VggtoolError(f"{db}: the database is empty")
    mean = total / count
    if per_channel_only:
        return mean.reshape(1, -1, 1, 1), count
    return mean.transpose(2, 0, 1)[None], count


def mean_blob(mean):
    """A 1 x C x H x W mean as Caffe's BlobProto: num/channels/height/width set, float data."""
    blob = caffe_pb2.BlobProto()
    blob.num, blob.channels, blob.height, blob.width = mean.shape
    set_proto_values(blob, mean.astype(np.float32))
    return blob


def run(args):
    if args.backend.lower() != "lmdb":
        raise VggtoolError(f"--backend {args.backend}: only lmdb is supported")
    check_output_path(args.out, "output mean file")
    mean, count = image_mean(args.db, args.per_channel_only)
    write_binary_proto(args.out, mean_blob(mean))
    print(f"Processed {count} files.")
    print(f"Write to {args.out}")
    print(f"Number of channels: {mean.shape[1]}")
    for c, v in enumerate(mean.reshape(mean.shape[1], -1).mean(axis=1)):
        print(f"mean_value channel [{c}]: {v:.6g}")
    return 0
