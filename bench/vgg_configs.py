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
