"""The VGG configurations the benchmarks build (Table 1's A, D, E), and the same net in PyTorch.

Imports neither vggtool nor torch at module level, so each benchmark's PyTorch half can run in a Python
that has only torch (bench_memory.py --torch-python)."""
CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}
NAMES = {"A": "VGG-11", "D": "VGG-16", "E": "VGG-19"}


# The paper's SGD settings (§3.1: lr 1e-2, momentum 0.9, weight decay 5e-4) at a fixed rate, as solver
# prototxt text for the benchmarks that train.
def sgd_solver_text(seed):
    return (f'base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed" max_iter: 1000 '
            f'random_seed: {seed} snapshot_after_train: false')


GAUSSIAN_FILLERS = ('weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 }',
                    'weight_filler { type: "gaussian" std: 0.005 } bias_filler { type: "constant" value: 0.1 }')


def vgg_layers(cfg, classes, width_div=1, fc=4096, dropout=True, fillers=GAUSSIAN_FILLERS):
    """Caffe prototxt layers of configuration `cfg` from blob "data" to SoftmaxWithLoss on "label", with the
    paper's layer names (conv1_1, ..., fc8); `fillers`: the (conv, fc) filler text."""
    out, bottom, stage, idx = [], "data", 1, 1
    for v in CFGS[cfg]:
        if v == "M":
            out.append(f'layer {{ name: "pool{stage}" type: "Pooling" bottom: "{bottom}" top: "pool{stage}" '
                       'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }')
            bottom, stage, idx = f"pool{stage}", stage + 1, 1
            continue
        name = f"conv{stage}_{idx}"
        out.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" '
                   f'convolution_param {{ num_output: {v // width_div} kernel_size: 3 pad: 1 {fillers[0]} }} }}')
        out.append(f'layer {{ name: "relu{stage}_{idx}" type: "ReLU" bottom: "{name}" top: "{name}" }}')
        bottom, idx = name, idx + 1
    for i, n in ((6, fc), (7, fc), (8, classes)):
        out.append(f'layer {{ name: "fc{i}" type: "InnerProduct" bottom: "{bottom}" top: "fc{i}" '
                   f'inner_product_param {{ num_output: {n} {fillers[1]} }} }}')
        bottom = f"fc{i}"
        if i < 8:
            out.append(f'layer {{ name: "relu{i}" type: "ReLU" bottom: "fc{i}" top: "fc{i}" }}')
            if dropout:
                out.append(f'layer {{ name: "drop{i}" type: "Dropout" bottom: "fc{i}" top: "fc{i}" '
                           'dropout_param { dropout_ratio: 0.5 } }')
    out.append('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }')
    return out


def torch_vgg(nn, net, size, classes, width_div=1, fc=4096, channels=3, dropout=True):
    """torch.nn.Sequential of configuration `net`: 3x3/pad-1 convs + ReLU, 2x2/2 max pools, fc6-fc8 with
    dropout 0.5 (torchvision's layout without the adaptive pool), for a size x size input; `width_div`,
    `fc`, `channels` and `dropout` give the laptop-scale nets of `vggtool reproduce` (8, 512, 1, False)."""
    layers, c = [], channels
    for v in CFGS[net]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v // width_div, 3, padding=1), nn.ReLU(inplace=True)]
            c = v // width_div
    s = size // 32
    drop = [nn.Dropout(0.5)] if dropout else []
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * s * s, fc), nn.ReLU(inplace=True), *drop,
                         nn.Linear(fc, fc), nn.ReLU(inplace=True), *drop, nn.Linear(fc, classes))
