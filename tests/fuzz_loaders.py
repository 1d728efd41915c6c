"""Run by tests/io/test_fuzz.py in a subprocess: feed mutated inputs to vggtool's loaders.

usage: fuzz_loaders.py WORKDIR SEED COUNT_PER_KIND

Kinds: prototxt (Net construction), caffemodel (Net.copy_from, and Net construction from the binary),
solverstate (Solver.restore), binaryproto (mean file and PCA statistics), datum (Datum decoding and the
data transform). Mutations: bit flips, truncation, byte insertion, and field-value changes (a number or a
string of the text replaced; a scalar field of the parsed message set to an extreme value).

Prints one line per input, `kind index mutation outcome [message]`, outcome being OK or the exception's
type name (VggtoolError for vggtool's own, whatever its subclass), then `DONE n`. An input that runs
longer than a few seconds is reported as Hang. The address space is capped (RLIMIT_AS) so that an
input that would allocate without bound fails here instead of swapping the machine.
"""
import os
import resource
import signal
import sys
import traceback

import cv2
import numpy as np

from vggtool import Net
from vggtool.io.wire import array_to_proto
from vggtool.data.datum import array_to_datum, datum_to_image, encoded_datum, parse_datum
from vggtool.data.transform import DataTransformer, read_pca_stats
from vggtool.errors import VggtoolError
from vggtool.data.mean import load_mean
from vggtool.proto import caffe_pb2
from vggtool.io.prototxt import parse_text
from vggtool.io.wire import write_binary_proto
from vggtool.solvers.glog import GLog
from vggtool.solvers.solver import Solver

DEPLOY = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc7" type: "InnerProduct" bottom: "pool1" top: "fc7"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8" inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""

TRAIN = """name: "train"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 2 dim: 3 dim: 3 } shape { dim: 4 }
    data_filler { type: "uniform" min: -1 max: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "split" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { axis: 1 slice_point: 1 } }
layer { name: "cat" type: "Concat" bottom: "b" bottom: "a" top: "cat" concat_param { axis: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "cat" bottom: "data" top: "sum" eltwise_param { operation: SUM } }
layer { name: "flat" type: "Flatten" bottom: "sum" top: "flat" }
layer { name: "ip" type: "InnerProduct" bottom: "flat" top: "ip" param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" loss_weight: 1 }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST }
  accuracy_param { top_k: 2 } }
"""

OTHERS = """name: "others"
input: "data" input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 group: 1 dilation: 1
    weight_filler { type: "msra" } bias_term: true } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "gpool" type: "Pooling" bottom: "conv" top: "gpool" pooling_param { pool: MAX global_pooling: true } }
layer { name: "sig" type: "Sigmoid" bottom: "gpool" top: "sig" }
layer { name: "tanh" type: "TanH" bottom: "pool" top: "tanh" }
layer { name: "reshape" type: "Reshape" bottom: "tanh" top: "reshaped" reshape_param { shape { dim: 0 dim: -1 } axis: 0 num_axes: -1 } }
layer { name: "ip" type: "InnerProduct" bottom: "reshaped" top: "ip" inner_product_param { num_output: 4 axis: 1 transpose: false } }
layer { name: "flatten" type: "Flatten" bottom: "sig" top: "flat" flatten_param { axis: 1 end_axis: -1 } }
layer { name: "euclid" type: "EuclideanLoss" bottom: "ip" bottom: "flat" top: "euclid" }
layer { name: "silence" type: "Silence" bottom: "euclid" }
"""

V1 = """name: "v1"
input: "data" input_dim: 1 input_dim: 3 input_dim: 6 input_dim: 6
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
  weight_decay: 0 convolution_param { num_output: 2 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool" top: "fc" inner_product_param { num_output: 3 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""

SOLVER = """base_lr: 0.01 lr_policy: "step" stepsize: 5 gamma: 0.5 momentum: 0.9 weight_decay: 0.0005
max_iter: 3 snapshot_prefix: "{prefix}" random_seed: 1 type: "{type}" """

INT_VALUES = [0, 1, -1, 2, 7, 255, 2**31 - 1, -2**31, 2**32 + 3, 2**63 - 1]
FLOAT_VALUES = [0.0, -1.0, 1e38, -1e38, float("nan"), float("inf"), 1e-45]
STRINGS = ["", "data", "Convolution", "InnerProduct", "Input", "nosuch", "/dev/zero", "x" * 300, "..", "\u00e9"]

HANG_SECONDS = 20


class Hang(Exception):
    pass


def on_alarm(signum, frame):
    raise Hang(f"no answer within {HANG_SECONDS} s")


# -- mutations ------------------------------------------------------------------------------------------------
def bit_flips(rng, data, text=False):
    """1 to 8 flipped bits (text: the low 7 bits only, so that it stays ASCII and reaches the parser)."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        i = int(rng.integers(0, len(b)))
        b[i] ^= 1 << int(rng.integers(0, 7 if text else 8))
    return bytes(b)


def truncation(rng, data):
    return data[:int(rng.integers(0, len(data)))]


def insertion(rng, data):
    """1 to 16 random bytes, or 1 to 3 digits (so that numbers in text grow, at most a thousandfold: a
    valid net of a few GB would only time out here; far larger sizes come from the field changes)."""
    i = int(rng.integers(0, len(data) + 1))
    if rng.random() < 0.5:
        extra = bytes(48 + int(c) for c in rng.integers(0, 10, int(rng.integers(1, 4))))
    else:
        extra = rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
    return data[:i] + extra + data[i:]


def text_field_change(rng, data):
    """Replace one number or quoted string of a prototxt by an extreme or unrelated value."""
    import re

    text = data.decode("utf-8")
    tokens = list(re.finditer(r'-?\d+(\.\d+)?(e-?\d+)?|"[^"]*"', text))
    m = tokens[int(rng.integers(0, len(tokens)))]
    if m.group().startswith('"'):
        new = '"' + STRINGS[int(rng.integers(0, len(STRINGS)))] + '"'
    elif rng.random() < 0.7:
        new = str(INT_VALUES[int(rng.integers(0, len(INT_VALUES)))])
    else:
        new = repr(FLOAT_VALUES[int(rng.integers(0, len(FLOAT_VALUES)))]).replace("inf", "1e999")
    return (text[:m.start()] + new + text[m.end():]).encode("utf-8")


def _repeated(field):
    flag = getattr(field, "is_repeated", None)  # newer protobuf runtimes; older ones have `label`
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


def _scalar_fields(message, out):
    """(message, field descriptor, index or None) of every set scalar field, recursively."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            for sub in (value if _repeated(field) else [value]):
                _scalar_fields(sub, out)
        elif _repeated(field):
            out.extend((message, field, i) for i in range(min(len(value), 4)))
        else:
            out.append((message, field, None))
    return out


def _extreme(rng, field):
    f = field
    ints = {f.TYPE_INT32: (-2**31, 2**31 - 1), f.TYPE_SINT32: (-2**31, 2**31 - 1), f.TYPE_SFIXED32: (-2**31, 2**31 - 1),
            f.TYPE_UINT32: (0, 2**32 - 1), f.TYPE_FIXED32: (0, 2**32 - 1), f.TYPE_INT64: (-2**63, 2**63 - 1),
            f.TYPE_SINT64: (-2**63, 2**63 - 1), f.TYPE_SFIXED64: (-2**63, 2**63 - 1),
            f.TYPE_UINT64: (0, 2**64 - 1), f.TYPE_FIXED64: (0, 2**64 - 1)}
    if field.type in ints:
        lo, hi = ints[field.type]
        return min(max(INT_VALUES[int(rng.integers(0, len(INT_VALUES)))], lo), hi)
    if field.type in (f.TYPE_FLOAT, f.TYPE_DOUBLE):
        return FLOAT_VALUES[int(rng.integers(0, len(FLOAT_VALUES)))]
    if field.type == f.TYPE_BOOL:
        return bool(rng.integers(0, 2))
    if field.type == f.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return values[int(rng.integers(0, len(values)))]
    if field.type == f.TYPE_STRING:
        return STRINGS[int(rng.integers(0, len(STRINGS)))]
    return bytes(rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8))


def binary_field_change(rng, data, message_type):
    """Parse, set one scalar field to an extreme value, serialise."""
    message = message_type()
    message.ParseFromString(data)
    fields = _scalar_fields(message, [])
    owner, field, index = fields[int(rng.integers(0, len(fields)))]
    value = _extreme(rng, field)
    if index is None:
        setattr(owner, field.name, value)
    else:
        getattr(owner, field.name)[index] = value
    return message.SerializeToString()


# -- the loaders ----------------------------------------------------------------------------------------------
class Loaders:
    def __init__(self, work):
        self.work = work
        self.log = GLog(stream=False)
        self.deploy_path = os.path.join(work, "deploy.prototxt")
        with open(self.deploy_path, "w") as f:
            f.write(DEPLOY)
        self.deploy = Net(self.deploy_path, phase="TEST", seed=0)
        self.model_path = os.path.join(work, "deploy.caffemodel")
        self.deploy.save(self.model_path)
        self.solvers = []
        for kind in ("SGD", "Adam"):
            param = parse_text(SOLVER.format(prefix=os.path.join(work, kind), type=kind), caffe_pb2.SolverParameter())
            param.net_param.CopyFrom(parse_text(TRAIN, caffe_pb2.NetParameter()))
            solver = Solver(param, source="fuzz solver", log=self.log)
            solver.step(1)
            _, state = solver.snapshot()
            self.solvers.append((solver, state))
        self.mean_path = os.path.join(work, "mean.binaryproto")
        write_binary_proto(self.mean_path, array_to_proto(np.full((1, 3, 12, 12), 100, np.float32)))
        vec = caffe_pb2.BlobProtoVector()
        vec.blobs.append(array_to_proto(np.array([3.0, 2.0, 1.0], np.float32)))
        vec.blobs.append(array_to_proto(np.eye(3, dtype=np.float32)))
        self.pca_path = os.path.join(work, "pca.binaryproto")
        write_binary_proto(self.pca_path, vec)
        image = np.arange(7 * 9 * 3, dtype=np.uint8).reshape(7, 9, 3)
        png = cv2.imencode(".png", image)[1].tobytes()
        float_datum = caffe_pb2.Datum(channels=1, height=2, width=3, float_data=[0.5] * 6, label=1)
        boxed = array_to_datum(image, 2)
        boxed.box.extend([1, 1, 5, 6])
        self.datums = [array_to_datum(image, 1).SerializeToString(), encoded_datum(png, 0).SerializeToString(),
                       float_datum.SerializeToString(), boxed.SerializeToString()]

    def bases(self):
        """{kind: [(base bytes, message type for field changes or None for text)]}."""
        def read(path):
            with open(path, "rb") as f:
                return f.read()

        return {
            "prototxt": [(DEPLOY.encode(), None), (TRAIN.encode(), None), (OTHERS.encode(), None),
                         (V1.encode(), None)],
            "caffemodel": [(read(self.model_path), caffe_pb2.NetParameter)],
            "solverstate": [(read(state), caffe_pb2.SolverState) for _, state in self.solvers],
            "binaryproto": [(read(self.mean_path), caffe_pb2.BlobProto),
                            (read(self.pca_path), caffe_pb2.BlobProtoVector)],
            "datum": [(d, caffe_pb2.Datum) for d in self.datums],
        }

    def write(self, name, data):
        path = os.path.join(self.work, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def prototxt(self, data, which, i):
        path = self.write("m.prototxt", data)
        Net(path, phase="TEST" if i % 2 else "TRAIN", seed=i)

    def caffemodel(self, data, which, i):
        path = self.write("m.caffemodel", data)
        self.deploy.copy_from(path)
        if i % 2:
            Net(path, phase="TEST", seed=i)  # a .caffemodel holds the layer definitions too

    def solverstate(self, data, which, i):
        solver, _ = self.solvers[which]
        solver.restore(self.write("m.solverstate", data))

    def binaryproto(self, data, which, i):
        path = self.write("m.binaryproto", data)
        if which == 0:
            load_mean(mean_file=path)
            param = caffe_pb2.TransformationParameter(mean_file=path)
            DataTransformer(param, 1, "layer 'data' (Data)")
        else:
            read_pca_stats(path, "layer 'data' (Data)")

    def datum(self, data, which, i):
        datum = parse_datum(data, f"record {i}")
        image = datum_to_image(datum, color=[None, True, False][i % 3], source=f"record {i}")
        param = caffe_pb2.TransformationParameter(crop_size=4, mirror=True, smallest_side_min=5,
                                                  smallest_side_max=9)
        if i % 2:
            param.mean_value.extend([1.0])
        transformer = DataTransformer(param, 0, "layer 'data' (Data)")
        transformer(image, np.random.default_rng(i), source=f"record {i}")


MUTATIONS = ["bit_flips", "truncation", "insertion", "field_change"]


def main():
    work, seed, per_kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    limit = 4 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, on_alarm)
    loaders = Loaders(work)
    rng = np.random.default_rng(seed)
    n = 0
    for kind, bases in loaders.bases().items():
        for i in range(per_kind):
            which = i % len(bases)
            base, message_type = bases[which]
            # field changes reach the layers' own checks (the other mutations mostly stop at the parser)
            mutation = MUTATIONS[int(rng.choice(len(MUTATIONS), p=[0.2, 0.2, 0.2, 0.4]))]
            if mutation == "field_change":
                data = base
                for _ in range(int(rng.integers(1, 4))):
                    data = text_field_change(rng, data) if message_type is None else \
                        binary_field_change(rng, data, message_type)
            elif mutation == "bit_flips":
                data = bit_flips(rng, base, text=message_type is None)
            else:
                data = globals()[mutation](rng, base)
            try:
                signal.alarm(HANG_SECONDS)
                try:
                    getattr(loaders, kind)(data, which, i)
                finally:
                    signal.alarm(0)
                outcome, message = "OK", ""
            except VggtoolError as e:
                outcome, message = "VggtoolError", str(e)
            except Exception as e:  # what the test looks for: anything else that escapes
                outcome, message = type(e).__name__, str(e)
                traceback.print_exc()  # to stderr, for the test's failure report
                with open(os.path.join(work, f"escape_{kind}_{i}.bin"), "wb") as f:
                    f.write(data)
            message = " ".join(message.split())[:300]
            print(f"{kind} {i} {mutation} {outcome} {message}", flush=True)
            n += 1
    print(f"DONE {n}", flush=True)


if __name__ == "__main__":
    main()
