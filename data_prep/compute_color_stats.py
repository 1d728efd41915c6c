"""compute_color_stats: the RGB colour covariance of a dataset, eigen-decomposed, for AlexNet's PCA
colour augmentation (transform_param pca_stats_file).

Output: a BlobProtoVector of two blobs, in RGB order on the 0-255 scale:
  blobs[0] eigenvalues, shape (3,), descending;
  blobs[1] eigenvectors, shape (3, 3), column j the unit eigenvector of eigenvalue j.
Channel order is R, G, B (the paper's "RGB pixel values"); the transform turns the shift back into
Caffe's BGR order. Pixels are sampled (--max_pixels) so huge datasets stay fast; the sample is seeded.
"""
import numpy as np

from vggtool.io.wire import array_to_proto
from vggtool.data.datum import datum_to_image, iterate_records
from vggtool.errors import VggtoolError
from vggtool.proto import caffe_pb2
from vggtool.io.files import check_output_path
from vggtool.io.wire import write_binary_proto

HELP = "RGB covariance eigen-decomposition of an LMDB for PCA colour augmentation (BlobProtoVector)"


def add_arguments(p):
    p.add_argument("db", help="input LMDB")
    p.add_argument("out", help="output .binaryproto (BlobProtoVector: eigenvalues, eigenvectors)")
    p.add_argument("--max_pixels_per_image", type=int, default=2000,
                   help="pixels sampled per image (0 = all pixels; default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pixel sampling")


def color_stats(db, max_pixels_per_image=2000, seed=0):
    """(eigenvalues (3,), eigenvectors (3, 3) columns, pixel count) of the RGB covariance."""
    rng = np.random.default_rng(seed)
    n, s1, s2 = 0, np.zeros(3), np.zeros((3, 3))
    for key, datum in iterate_records(db):
        image = datum_to_image(datum, source=f"{db} record {key.decode(errors='replace')}")
        if image.shape[2] != 3:
            raise VggtoolError(f"{db}: record {key.decode(errors='replace')} has {image.shape[2]} channel(s); "
                               "colour statistics need 3-channel images")
        pixels = image.reshape(-1, 3)[:, ::-1].astype(np.float64)  # BGR -> RGB
        if max_pixels_per_image and len(pixels) > max_pixels_per_image:
            pixels = pixels[rng.choice(len(pixels), max_pixels_per_image, replace=False)]
        n += len(pixels)
        s1 += pixels.sum(axis=0)
        s2 += pixels.T @ pixels
    if n < 2:
        raise VggtoolError(f"{db}: the database is empty (or has a single pixel)")
    mean = s1 / n
    cov = (s2 - n * np.outer(mean, mean)) / (n - 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    return np.clip(values[order], 0, None), vectors[:, order], n


def write_color_stats(path, values, vectors):
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.append(array_to_proto(np.asarray(values, np.float32)))
    vec.blobs.append(array_to_proto(np.asarray(vectors, np.float32)))
    write_binary_proto(path, vec)


def run(args):
    check_output_path(args.out, "output colour statistics file")
    values, vectors, n = color_stats(args.db, args.max_pixels_per_image, args.seed)
    write_color_stats(args.out, values, vectors)
    print(f"RGB covariance of {n} pixels (0-255 scale)")
    for v, p in zip(values, vectors.T):
        print(f"eigenvalue {v:.6g}  eigenvector (R,G,B) = ({p[0]:+.4f}, {p[1]:+.4f}, {p[2]:+.4f})")
    print(f"Write to {args.out}")
    return 0
