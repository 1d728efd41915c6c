"""Upgrade legacy net definitions on read, as Caffe does.

- V1 nets (`layers { type: CONVOLUTION ... }`) become `layer { type: "Convolution" ... }`, with
  `blobs_lr`/`weight_decay`/`param` turned into ParamSpec entries;
- the top-level `input:` / `input_dim:` / `input_shape` fields become an Input layer;
- scale/mean/crop/mirror inside data_param (older still) move into transform_param.
"""
from ..errors import VggtoolError
from ..proto import caffe_pb2

# V1LayerParameter.LayerType name -> the layer type string of today's LayerParameter.
V1_TYPE_NAMES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution",
    "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

_V1_SIMPLE_FIELDS = ("name", "bottom", "top", "loss_weight")


def upgrade_v1_layer(v1, source="net"):
    layer = caffe_pb2.LayerParameter()
    if v1.HasField("layer"):
        raise VggtoolError(f"{source}: layer '{v1.name}' uses the V0 format (layers {{ layer {{ ... }} }}), "
                           "which vggtool does not read; upgrade it with Caffe's upgrade_net_proto_text")
    layer.name = v1.name
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.loss_weight.extend(v1.loss_weight)
    if v1.HasField("type"):
        enum_name = caffe_pb2.V1LayerParameter.LayerType.Name(v1.type)
        if enum_name not in V1_TYPE_NAMES:
            raise VggtoolError(f"{source}: layer '{v1.name}' has V1 type {enum_name}, which has no upgrade")
        layer.type = V1_TYPE_NAMES[enum_name]
    for rule in v1.include:
        layer.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        layer.exclude.add().CopyFrom(rule)
    for blob in v1.blobs:
        layer.blobs.add().CopyFrom(blob)
    n_params = max(len(v1.param), len(v1.blobs_lr), len(v1.weight_decay), len(v1.blob_share_mode))
    for i in range(n_params):
        spec = layer.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    # Every *_param message of V1 has a field of the same name and type in LayerParameter.
    for field, value in v1.ListFields():
        if field.name.endswith("_param") and field.name in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name:
            getattr(layer, field.name).CopyFrom(value)
    return layer


def upgrade_data_transform(layer):
    """Move scale/mean_file/crop_size/mirror out of data_param/image_data_param into transform_param.

    Returns True if anything moved."""
    moved = False
    for holder_name in ("data_param", "image_data_param", "window_data_param"):
        if not layer.HasField(holder_name):
            continue
        holder = getattr(layer, holder_name)
        for field in ("scale", "mean_file", "crop_size", "mirror"):
            if field in holder.DESCRIPTOR.fields_by_name and holder.HasField(field):
                setattr(layer.transform_param, field, getattr(holder, field))
                holder.ClearField(field)
                moved = True
    return moved


def upgrade_net(net, source="net"):
    """Upgrade `net` (a NetParameter) in place; return True if anything changed."""
    changed = False
    if len(net.layers):
        if len(net.layer):
            raise VggtoolError(f"{source}: uses both 'layer' (new) and 'layers' (V1) fields; use one format")
        for v1 in net.layers:
            net.layer.add().CopyFrom(upgrade_v1_layer(v1, source))
        net.ClearField("layers")
        changed = True
    if len(net.input):
        shapes = []
        if len(net.input_shape):
            if len(net.input_shape) != len(net.input):
                raise VggtoolError(f"{source}: {len(net.input)} input(s) but {len(net.input_shape)} input_shape(s)")
            shapes = [list(s.dim) for s in net.input_shape]
        elif len(net.input_dim):
            if len(net.input_dim) != 4 * len(net.input):
                raise VggtoolError(f"{source}: {len(net.input)} input(s) need {4 * len(net.input)} input_dim "
                                   f"values (num, channels, height, width each), got {len(net.input_dim)}")
            dims = list(net.input_dim)
            shapes = [dims[4 * i:4 * i + 4] for i in range(len(net.input))]
        else:
            raise VggtoolError(f"{source}: 'input' given without input_shape or input_dim")
        input_layer = caffe_pb2.LayerParameter(name="input", type="Input")
        input_layer.top.extend(net.input)
        for shape in shapes:
            input_layer.input_param.shape.add().dim.extend(shape)
        layers = [input_layer] + [caffe_pb2.LayerParameter().FromString(l.SerializeToString()) for l in net.layer]
        net.ClearField("layer")
        net.layer.extend(layers)
        for f in ("input", "input_shape", "input_dim"):
            net.ClearField(f)
        changed = True
    for layer in net.layer:
        changed |= upgrade_data_transform(layer)
    return changed


# SolverParameter.SolverType (deprecated enum) -> SolverParameter.type string
_SOLVER_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


def upgrade_solver(solver):
    if solver.HasField("solver_type"):
        if solver.HasField("type") and solver.type != _SOLVER_TYPES[solver.solver_type]:
            raise VggtoolError("solver gives both 'type' and the deprecated 'solver_type', and they differ")
        solver.type = _SOLVER_TYPES[solver.solver_type]
        solver.ClearField("solver_type")
    return solver
