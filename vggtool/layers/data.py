"""Data layers reading a dataset with background prefetching: Data (LMDB of Datum) and ImageData
(an image list). Tops: data (N, C, H, W) and optionally label (N) and box (N, 4).

Boxes (localisation). A third top enables them: it gets each sample's first ground-truth box (the
Datum's `box` field; for ImageData a list `path label x1 y1 x2 y2 ...`) moved through the sample's
rescale, crop and mirror and written as (cx, cy, w, h) normalised by the output size, not clipped
to the crop (vggtool.data.boxes).
A record without a box is an error naming it.

Determinism. The record of sample i of batch t is (skip + t * batch_size + sample_offset + i) mod N
(ImageData with shuffle: position p of a seeded permutation drawn per epoch), and every random draw of
the sample comes from a Generator seeded by (net seed, layer, t, sample_offset + i) -- the same key as
Net.sample_rng -- so a batch depends only on t, not on how the batch is split over devices. t is net.iteration, set by the solver (iter * iter_size + micro-batch; test nets:
test round * test_iter + test batch, Solver.test_round), so resume is exact; a forward at an unchanged net.iteration reads batch t + 1
(a caller that never sets it, e.g. a pycaffe-style loop, walks through the data as in Caffe).

Multi-device hook: `batch_size` is the WHOLE batch. A replica's net carries `net.batch_divisor` (the
number of replicas, default 1) and `net.sample_offset` (global index of its first sample, i.e. replica
index * batch_size / batch_divisor). The layer produces batch_size / batch_divisor samples (an error if
it does not divide), those with global indices sample_offset + i. batch_divisor is read at setup and
at every reshape, so a parallel driver sets it after building the replica's net and calls
net.reshape(), which also reshapes the layers downstream; sample_offset is read at every forward.

Prefetch: decoding and augmentation run in a pool of worker threads (OpenCV releases the GIL; threads
beat processes here: bench/bench_data.py). After batch t is taken, batches t+1 .. t+prefetch are queued. They
are keyed by (t, offset, count), so a solver that jumps (resume, a test round) just gets a batch
computed on demand, and stale ones are dropped. Threads: the setting data_threads (vggtool.config). The
workers leave uint8 pixels (and each sample's draws); forward makes them float32 in top[0] itself, on the
host or the device, so no float32 copy of a batch is made or kept.

Reading (Data). Record i is the i-th in key order; the layer never lists the keys at setup: the count
is the LMDB's stat and each worker thread reads with its own cursor, seeking by key on a jump
(vggtool.data.lmdb_records; only a database whose keys are not convert_imageset's '%08d_' numbers needs
its key list, read once at the first long jump).

A record that cannot be decoded is skipped with one warning per record, counted in
`layer.skipped_records` (every skip) and `layer.corrupt_records` (distinct records), and replaced by the
next good record; training never stops on it. The count is logged at the end of each pass over the
data, and by the solver after each test round and at the end of training (skipped_summary).
"""
import logging
import os
import threading
import weakref
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..data import boxes as box_geometry
from ..data.datum import datum_to_image, decode_image_bytes, shared_lmdb
from ..data.imagelist import read_box_list, read_image_list
from ..data.lmdb_records import LmdbRecords
from ..config import defaults
from ..data.transform import DataTransformer, fixed_resize
from ..errors import VggtoolError
from ..proto import caffe_pb2
from .base import Layer, register_layer

log = logging.getLogger("vggtool.data")


NO_BOXES = np.zeros((0, 4), dtype=np.float64)
NO_BOXES.flags.writeable = False


class CorruptRecord(Exception):
    """A record that cannot be turned into an image (skipped at training time)."""


class PrefetchingDataLayer(Layer):
    per_sample = True
    exact_bottoms = 0
    min_tops = 1
    max_tops = 3

    # Subclasses: open_source() -> number of records; load(index) -> (HxWxC uint8, label, boxes (k, 4)
    # or None) or raise
    # CorruptRecord; describe(index) -> a name for messages; self.batch_size, self.prefetch, self.rand_skip.

    def layer_setup(self, bottom, top):
        if self.batch_size <= 0:
            raise self.error("batch_size must be positive")
        self.transformer = DataTransformer(self.param.transform_param, self.phase,
                                           f"layer '{self.name}' ({self.type})")
        self.with_boxes = len(top) > 2
        self.num_records = self.open_source()
        if self.num_records == 0:
            raise self.error(f"{self.source_path} holds no records (empty database or list)")
        net = self.net
        self.seed = net.seed if net is not None else 0
        self.layer_key = zlib.crc32(self.name.encode())
        self.local_batch = self.replica_batch()
        self.skip = 0
        if self.rand_skip:
            self.skip = int(np.random.default_rng([self.seed, self.layer_key, 1]).integers(0, self.rand_skip + 1))
        self.skipped_records = 0
        self._warned = set()
        self._lock = threading.Lock()
        self._perms = {}
        self._t, self._last_iteration = 0, None
        # Shape from the first good record, as Caffe does.
        index, image, _, _ = self._load_good(0)
        self.shape = self.transformer.output_shape(image)
        self.pixel_dtype = image.dtype  # uint8, or float32 for Datums of float_data
        self.threads = self.net.settings.data_threads if self.net is not None else defaults().data_threads
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=f"data-{self.name}")
        weakref.finalize(self, self.pool.shutdown, wait=False, cancel_futures=True)
        self._pending = {}
        self.device_mean = None  # the transformer's mean on the device, sent at the first batch

    def replica_batch(self):
        divisor = int(getattr(self.net, "batch_divisor", 1) or 1)
        if divisor < 1 or self.batch_size % divisor:
            raise self.error(f"batch_size {self.batch_size} (the whole batch) does not divide over {divisor} "
                             f"replicas; use a multiple of {divisor}")
        return self.batch_size // divisor

    def reshape(self, bottom, top):
        self.local_batch = self.replica_batch()
        top[0].reshape((self.local_batch,) + self.shape)
        if len(top) > 1:
            top[1].reshape((self.local_batch,))
        if len(top) > 2:
            top[2].reshape((self.local_batch, 4))

    def backward(self, top, propagate_down, bottom):
        pass

    # -- the sample schedule ------------------------------------------------------------------------------
    def record_index(self, t, g):
        """The record of global sample g in batch t."""
        pos = self.skip + t * self.batch_size + g
        return pos % self.num_records

    def sample_rng(self, t, g):
        # Same key as Net.sample_rng(name, i) with net.iteration = t, sample_offset + i = g.
        key = [self.seed, self.layer_key, int(t), int(g)]
        return np.random.Generator(np.random.Philox(np.random.SeedSequence(key)))

    def _load_good(self, index):
        """(index, image, label, boxes) of the first decodable record at or after `index` (wrapping)."""
        for k in range(self.num_records):
            i = (index + k) % self.num_records
            try:
                image, label, boxes = self.load(i)
                return i, image, label, boxes
            except CorruptRecord as e:
                with self._lock:
                    self.skipped_records += 1
                    first = i not in self._warned
                    self._warned.add(i)
                if first:
                    log.warning("layer '%s': skipping %s: %s", self.name, self.describe(i), e)
        raise self.error(f"no record of {self.source_path} can be decoded")

    @property
    def corrupt_records(self):
        """Distinct records found undecodable so far."""
        return len(self._warned)

    def skipped_summary(self):
        """One line counting the corrupt records skipped so far, or None when there were none."""
        if not self._warned:
            return None
        return (f"layer '{self.name}': {len(self._warned)} corrupt record(s) of {self.source_path} skipped "
                f"so far ({self.skipped_records} skip(s) in all)")

    def _log_epoch_end(self, t):
        """After the batch that completes a pass over the records: the count so far (offset-0 replica)."""
        start = self.skip + t * self.batch_size
        end = start + self.batch_size
        if end // self.num_records > start // self.num_records:
            line = self.skipped_summary()
            if line:
                log.warning("%s (end of epoch %d)", line, end // self.num_records)

    def make_sample(self, t, g):
        """(C x H x W pixels, colour shift or None, crop, label, box or None) of global sample g."""
        index, image, label, boxes = self._load_good(self.record_index(t, g))
        rng, source = self.sample_rng(t, g), _Description(self, index)  # made only for an error message
        box = None
        if self.with_boxes:
            if boxes is None or len(boxes) == 0:
                raise self.error(f"{self.describe(index)} has no bounding box, but the layer has a box top "
                                 "(convert the data with boxes, or drop the third top)")
            pixels, shift, crop, moved = self.transformer.geometry(image, rng, source, boxes=boxes[:1])
            box = box_geometry.to_cxcywh(moved, pixels.shape[2], pixels.shape[1])[0]
        else:
            pixels, shift, crop, _ = self.transformer.geometry(image, rng, source)
        if pixels.dtype != self.pixel_dtype:
            raise self.error(f"{source} holds {pixels.dtype} pixels but the first record holds {self.pixel_dtype}; "
                             "a database mixes byte and float_data Datums")
        if pixels.shape != self.shape:
            raise self.error(f"{self.describe(index)} gives a {pixels.shape} input but the batch is {self.shape}; "
                             "set crop_size (or resize when converting) so all inputs have one size")
        return pixels, shift, crop, label, box

    def _fill(self, t, offset, lo, hi, batch):
        for i in range(lo, hi):
            batch.pixels[i], shift, batch.crops[i], batch.labels[i], box = self.make_sample(t, offset + i)
            if shift is not None:
                batch.shifts[i] = shift
            if box is not None:
                batch.boxes[i] = box

    def _submit(self, key):
        """Queue batch `key` = (t, offset, count) as a few chunks of samples (per-task overhead matters
        for small images); the workers write straight into the batch's buffers."""
        t, offset, count = key
        batch = _Batch(count, self.shape, self.pixel_dtype, self.transformer.colour_shift, self.with_boxes)
        chunks = min(count, 2 * self.threads)
        bounds = [count * k // chunks for k in range(chunks + 1)]
        futures = [self.pool.submit(self._fill, t, offset, lo, hi, batch)
                   for lo, hi in zip(bounds[:-1], bounds[1:])]
        return futures, batch

    def _to_top(self, batch, top):
        """The batch's pixels into top[0].data, made float32, shifted, mean-subtracted and scaled there: on
        the host straight from the workers' uint8 buffer (no float32 batch in between: the conversion
        costs the training thread what copying one would, and the workers nothing); on a device after
        sending the uint8 pixels (a quarter of the bytes)."""
        xp = self.xp
        if self.device_mean is None and self.transformer.mean is not None:
            self.device_mean = self.device.asarray(self.transformer.mean)
        with self.device:
            pixels = xp.asarray(batch.pixels)
            shifts = None if batch.shifts is None else xp.asarray(batch.shifts)
            data = top[0].data
            out = data if data.dtype == np.float32 and data.flags.c_contiguous else None
            out = self.transformer.to_float(xp, pixels, shifts, batch.crops, mean=self.device_mean, out=out)
            if out is not data:
                data[...] = out

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, bottom, top):
        t = self.batch_position()
        if self.replica_batch() != self.local_batch:
            raise self.error("net.batch_divisor changed since the last reshape: call net.reshape()")
        offset = int(getattr(self.net, "sample_offset", 0))
        key = (t, offset, self.local_batch)
        entry = self._pending.pop(key, None) or self._submit(key)
        # Queue the following batches before waiting, so workers stay busy while this one trains.
        for k in [k for k in self._pending if not (t < k[0] <= t + self.prefetch) or k[1:] != key[1:]]:
            for f in self._pending.pop(k)[0]:
                f.cancel()
        for dt in range(1, self.prefetch + 1):
            nxt = (t + dt, offset, self.local_batch)
            if nxt not in self._pending:
                self._pending[nxt] = self._submit(nxt)
        futures, batch = entry
        for f in futures:
            f.result()  # re-raises a worker's error here, in the training thread
        if offset == 0:
            self._log_epoch_end(t)
        self._to_top(batch, top)
        if len(top) > 1:
            top[1].data[...] = self.xp.asarray(batch.labels)
        if len(top) > 2:
            top[2].data[...] = self.xp.asarray(batch.boxes)

    def close(self):
        for futures, *_ in self._pending.values():
            for f in futures:
                f.cancel()
        self._pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Description:
    """describe(index), worked out only when formatted (an error message): not once per sample."""

    def __init__(self, layer, index):
        self.layer, self.index = layer, index

    def __str__(self):
        return self.layer.describe(self.index)


class _Batch:
    """The host buffers of one prefetched batch, filled by the workers: pixels (N, C, H, W) (uint8 but for
    float_data Datums), colour shifts (N, 3, 1, 1) or None, crops (N, 3) (h_off, w_off, mirror), labels,
    boxes or None. _to_top makes the float32 data."""

    def __init__(self, count, shape, pixel_dtype, colour_shift, with_boxes):
        self.pixels = np.empty((count,) + shape, dtype=pixel_dtype)
        self.shifts = np.empty((count, 3, 1, 1), dtype=np.float32) if colour_shift else None
        self.crops = np.empty((count, 3), dtype=np.int64)
        self.labels = np.empty(count, dtype=np.float32)
        self.boxes = np.empty((count, 4), dtype=np.float32) if with_boxes else None


@register_layer("Data")
class DataLayer(PrefetchingDataLayer):
    """Datum records from an LMDB (data_param: source, batch_size, backend, prefetch, rand_skip)."""

    def layer_setup(self, bottom, top):
        p = self.param.data_param
        self.source_path = p.source
        self.batch_size = p.batch_size
        self.prefetch = p.prefetch
        self.rand_skip = p.rand_skip
        if not p.source:
            raise self.error("data_param.source is not set (the LMDB folder)")
        if p.HasField("backend") and p.backend == caffe_pb2.DataParameter.LEVELDB:
            raise self.error(f"backend LEVELDB ({p.source}) is not supported; convert the images to LMDB with "
                             "data_prep convert_imageset and set `backend: LMDB`")
        super().layer_setup(bottom, top)

    def open_source(self):
        try:
            self.env = shared_lmdb(self.source_path)
        except VggtoolError as e:
            raise self.error(str(e)) from None
        self.records = LmdbRecords(self.env, self.source_path)  # no key list: a cursor, as in Caffe
        return self.records.count

    def describe(self, index):
        return f"record {self.records.key(index).decode(errors='replace')} of {self.source_path}"

    def load(self, index):
        _, value = self.records.get(index)
        datum = caffe_pb2.Datum()
        try:
            datum.ParseFromString(value)
            image = datum_to_image(datum, color=self.transformer.color)
        except Exception as e:  # protobuf DecodeError, VggtoolError from decoding: both mean a bad record
            raise CorruptRecord(str(e)) from None
        box = datum.box
        if not box:  # the common case, without the conversion of an empty repeated field
            return image, datum.label, NO_BOXES
        if len(box) % 4:
            raise CorruptRecord(f"{len(box)} box values (not a multiple of 4)")
        return image, datum.label, np.asarray(box, dtype=np.float64).reshape(-1, 4)


@register_layer("ImageData")
class ImageDataLayer(PrefetchingDataLayer):
    """Image files named by a list (image_data_param: source, root_folder, batch_size, shuffle,
    new_height, new_width, is_color, rand_skip)."""

    def layer_setup(self, bottom, top):
        p = self.param.image_data_param
        self.source_path = p.source
        self.batch_size = p.batch_size
        self.prefetch = 4
        self.rand_skip = p.rand_skip
        if not p.source:
            raise self.error("image_data_param.source is not set (the image list file)")
        if (p.new_height > 0) != (p.new_width > 0):
            raise self.error("new_height and new_width go together")
        if p.root_folder and not os.path.isdir(p.root_folder):
            raise self.error(f"root_folder not found: {p.root_folder}")
        super().layer_setup(bottom, top)

    def open_source(self):
        self.entry_boxes = None
        try:
            if self.with_boxes:
                rows = read_box_list(self.source_path)
                self.entries = [(name, label) for name, label, _ in rows]
                self.entry_boxes = [boxes for _, _, boxes in rows]
            else:
                self.entries = read_image_list(self.source_path)
        except VggtoolError as e:
            raise self.error(str(e)) from None
        return len(self.entries)

    def record_index(self, t, g):
        pos = self.skip + t * self.batch_size + g
        if not self.param.image_data_param.shuffle:
            return pos % self.num_records
        epoch, k = divmod(pos, self.num_records)
        with self._lock:
            perm = self._perms.get(epoch)
            if perm is None:
                perm = np.random.default_rng([self.seed, self.layer_key, 2, epoch]).permutation(self.num_records)
                if len(self._perms) > 4:
                    self._perms.pop(min(self._perms))
                self._perms[epoch] = perm
        return int(perm[k])

    def describe(self, index):
        return f"{self.entries[index][0]} (entry {index + 1} of {self.source_path})"

    def load(self, index):
        p = self.param.image_data_param
        name, label = self.entries[index]
        path = os.path.join(p.root_folder, name)
        color = self.transformer.color
        if color is None:
            color = p.is_color
        try:
            with open(path, "rb") as f:
                image = decode_image_bytes(f.read(), color=color, source=path)
        except (OSError, VggtoolError) as e:
            raise CorruptRecord(str(e)) from None
        boxes = None if self.entry_boxes is None else self.entry_boxes[index]
        if p.new_height > 0:
            if boxes is not None:
                boxes = box_geometry.resize_boxes(boxes, image.shape[:2], (p.new_height, p.new_width))
            image = fixed_resize(image, p.new_height, p.new_width)
        return (image[:, :, None] if image.ndim == 2 else image), label, boxes
