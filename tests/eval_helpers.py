"""A small VGG-style net (3x3 convs, 2x2 pools, three FC layers, 32x32 input) for the evaluation tests."""
import numpy as np

from vggtool import Net

CROP = 32
CLASSES = 10
# Terms summed into one element by each layer with weights (C_in x 3 x 3 for the convs, the fan-in for the fc
# layers); chain_terms adds them up along the path from the data: the k_terms of a float32 comparison of that
# blob (tests/numerics.py).
LAYER_TERMS = {"conv1": 3 * 9, "conv2": 6 * 9, "conv3": 8 * 9, "fc6": 8 * 4 * 4, "fc7": 16, "fc8": CLASSES}
POOL_OF = {"pool1": "conv1", "pool2": "conv2", "pool3": "conv3", "prob": "fc8"}


def chain_terms(blob):
    names = list(LAYER_TERMS)
    last = names.index(POOL_OF.get(blob, blob))
    return sum(LAYER_TERMS[n] for n in names[:last + 1])


def conv(name, bottom, n):
    return f"""
layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"
  convolution_param {{ num_output: {n} kernel_size: 3 pad: 1
    weight_filler {{ type: "gaussian" std: 0.12 }} bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}"""


def pool(name, bottom):
    return f"""
layer {{ name: "{name}" type: "Pooling" bottom: "{bottom}" top: "{name}"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}"""


def fc(name, bottom, n, relu=True):
    text = f"""
layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{name}"
  inner_product_param {{ num_output: {n}
    weight_filler {{ type: "gaussian" std: 0.06 }} bias_filler {{ type: "gaussian" std: 0.1 }} }} }}"""
    if relu:
        text += f"""
layer {{ name: "relu_{name}" type: "ReLU" bottom: "{name}" top: "{name}" }}
layer {{ name: "drop_{name}" type: "Dropout" bottom: "{name}" top: "{name}" dropout_param {{ dropout_ratio: 0.5 }} }}"""
    return text


def deploy_text(crop=CROP, classes=CLASSES, softmax=True):
    text = f'name: "tinyvgg"\nlayer {{ name: "data" type: "Input" top: "data" ' \
           f'input_param {{ shape {{ dim: 1 dim: 3 dim: {crop} dim: {crop} }} }} }}'
    text += conv("conv1", "data", 6) + pool("pool1", "conv1")
    text += conv("conv2", "pool1", 8) + pool("pool2", "conv2")
    text += conv("conv3", "pool2", 8) + pool("pool3", "conv3")
    text += fc("fc6", "pool3", 16) + fc("fc7", "fc6", 16) + fc("fc8", "fc7", classes, relu=False)
    if softmax:
        text += '\nlayer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }'
    return text + "\n"


def make_model(folder, seed=7, name="deploy"):
    """Write <name>.prototxt and <name>.caffemodel (random weights drawn from `seed`); return the paths."""
    net_path = folder / f"{name}.prototxt"
    net_path.write_text(deploy_text())
    net = Net(str(net_path), phase="TEST", seed=seed)
    weights = folder / f"{name}.caffemodel"
    net.save(str(weights))
    return str(net_path), str(weights)


def random_image(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def weights_with_data_layer(tmp_path, weights, mean_value=(), mean_file=None, scale=None):
    """The caffemodel plus a TEST Data layer (no blobs) carrying transform_param, as a snapshot of a
    train_val net has it; a TRAIN layer with another mean comes first and must be passed over."""
    from vggtool.io import prototxt, wire
    from vggtool.proto import caffe_pb2

    param = prototxt.read_net_param(weights, is_text=False)
    train = caffe_pb2.LayerParameter(name="train_data", type="Data", top=["data", "label"])
    train.include.add(phase=caffe_pb2.TRAIN)
    train.transform_param.mean_value.extend([50, 50, 50])
    test = caffe_pb2.LayerParameter(name="test_data", type="Data", top=["data", "label"])
    test.include.add(phase=caffe_pb2.TEST)
    test.transform_param.mean_value.extend(mean_value)
    if mean_file:
        test.transform_param.mean_file = mean_file
    if scale is not None:
        test.transform_param.scale = scale
    layers = [train, test] + list(param.layer)
    del param.layer[:]
    param.layer.extend(layers)
    out = str(tmp_path / "snapshot.caffemodel")
    wire.write_binary_proto(out, param)
    return out
