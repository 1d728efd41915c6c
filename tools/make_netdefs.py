"""Write the nets of the paper's Table 1 (configurations A, A-LRN, B, C, D, E) and its training schedules.

One generator keeps the files consistent; run it after changing anything here:
    python tools/make_netdefs.py [--out netdefs] [--solver-out solver]
For each configuration X: netdefs/X/deploy.prototxt, netdefs/X/train_val.prototxt (the paper's gaussian
initialisation) and netdefs/X/train_val_xavier.prototxt (Glorot initialisation, the paper's alternative to
pre-training); solver/X_s256.prototxt, X_s384.prototxt, X_jitter.prototxt (the three training scales of
§3.1). Layer names follow Caffe's VGG_ILSVRC_16/19 deploy files (conv1_1, relu1_1, pool1, fc6, drop6, prob ...).
"""
import argparse
import os
import sys

# Per block: the convolutions as (kernel size, output channels). C's third conv of blocks 3-5 is 1x1.
_B = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
CONFIGS = {
    "vgg_a": [[3], [3], [3, 3], [3, 3], [3, 3]],
    "vgg_a_lrn": [[3], [3], [3, 3], [3, 3], [3, 3]],
    "vgg_b": [[3, 3], [3, 3], [3, 3], [3, 3], [3, 3]],
    "vgg_c": [[3, 3], [3, 3], [3, 3, 1], [3, 3, 1], [3, 3, 1]],
    "vgg_d": [[3, 3], [3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "vgg_e": [[3, 3], [3, 3], [3, 3, 3, 3], [3, 3, 3, 3], [3, 3, 3, 3]],
}
TITLES = {
    "vgg_a": "VGG configuration A (11 weight layers)",
    "vgg_a_lrn": "VGG configuration A-LRN (11 weight layers, LRN after conv1_1)",
    "vgg_b": "VGG configuration B (13 weight layers)",
    "vgg_c": "VGG configuration C (16 weight layers, 1x1 convolutions conv3_3, conv4_3, conv5_3)",
    "vgg_d": "VGG configuration D, VGG-16 (16 weight layers)",
    "vgg_e": "VGG configuration E, VGG-19 (19 weight layers)",
}


def _layer(name, type_, bottom, top, body=""):
    text = f'layer {{\n  name: "{name}"\n  type: "{type_}"\n  bottom: "{bottom}"\n  top: "{top}"\n'
    return text + body + "}\n"


# ILSVRC-2012 mean pixel, BGR (Caffe's VGG files subtract these values).
MEAN_BGR = (103.939, 116.779, 123.68)
# Training scales (§3.1): NetState stage -> (TRAIN transform, TEST transform). Fixed S is tested at Q = S,
# jittered S in [256, 512] at Q = 384 (single-scale; `vggtool test --scales` does multi-scale).
SCALES = {
    "s256": ("smallest_side: 256", "test_smallest_side: 256"),
    "s384": ("smallest_side: 384", "test_smallest_side: 384"),
    "jitter": ("smallest_side_min: 256\n    smallest_side_max: 512", "test_smallest_side: 384"),
}
# The paper: weights ~ N(0, variance 1e-2), biases 0.
FILLERS = {
    "gaussian": '    weight_filler {\n      type: "gaussian"\n      std: 0.1\n    }\n',
    "xavier": '    weight_filler {\n      type: "xavier"\n    }\n',
    "msra": '    weight_filler {\n      type: "msra"\n    }\n',
}
_LEARN = ("  param {\n    lr_mult: 1\n    decay_mult: 1\n  }\n"
          "  param {\n    lr_mult: 2\n    decay_mult: 0\n  }\n")
_BIAS = '    bias_filler {\n      type: "constant"\n      value: 0\n    }\n'


def _data_layers():
    mean = "".join(f"    mean_value: {m}\n" for m in MEAN_BGR)
    out = []
    for phase, source, batch, mirror in (("TRAIN", "data/ilsvrc12_train_lmdb", 256, "true"),
                                         ("TEST", "data/ilsvrc12_val_lmdb", 50, "false")):
        for stage, transforms in SCALES.items():
            scale = transforms[0] if phase == "TRAIN" else transforms[1]
            # s256 is the default: it is used unless another scale's stage is set.
            rule = (f"    stage: \"{stage}\"\n" if stage != "s256" else
                    "".join(f"    not_stage: \"{s}\"\n" for s in SCALES if s != "s256"))
            out.append(
                f'layer {{\n  name: "data"\n  type: "Data"\n  top: "data"\n  top: "label"\n'
                f"  include {{\n    phase: {phase}\n{rule}  }}\n"
                f"  transform_param {{\n    mirror: {mirror}\n    crop_size: 224\n{mean}    {scale}\n  }}\n"
                f'  data_param {{\n    source: "{source}"\n    batch_size: {batch}\n    backend: LMDB\n  }}\n}}\n')
    return out


def body_layers(config, learn, fill, last=("fc8", 1000), widths=None, fc_width=4096, dropout=0.5):
    """The layers of `config` after the input "data": conv1_1 .. pool5, fc6, fc7 (with ReLU and dropout) and
    the last InnerProduct `last` = (name, outputs), as text. learn(name) -> the layer's param {} text,
    fill(name) -> its fillers (placed inside convolution_param / inner_product_param); "" for none.
    `widths` (block -> channels, default Table 1's) and `fc_width` size the laptop-scale nets (MINI);
    `dropout` 0 leaves out the Dropout layers (MINI: see MINI_SOLVER's comment).
    Also used by tools/make_loc_netdefs.py (configuration D with a box-regression last layer)."""
    widths = _B if widths is None else widths
    out, bottom = [], "data"
    for block, kernels in enumerate(CONFIGS[config], start=1):
        for i, k in enumerate(kernels, start=1):
            name = f"conv{block}_{i}"
            pad = (k - 1) // 2
            out.append(_layer(name, "Convolution", bottom, name,
                              learn(name) + f"  convolution_param {{\n    num_output: {widths[block]}\n"
                              f"    pad: {pad}\n    kernel_size: {k}\n{fill(name)}  }}\n"))
            out.append(_layer(f"relu{block}_{i}", "ReLU", name, name))
            bottom = name
            if config == "vgg_a_lrn" and name == "conv1_1":
                out.append(_layer("norm1", "LRN", bottom, "norm1",
                                  "  lrn_param {\n    local_size: 5\n    alpha: 0.0001\n    beta: 0.75\n"
                                  "    k: 2\n  }\n"))
                bottom = "norm1"
        out.append(_layer(f"pool{block}", "Pooling", bottom, f"pool{block}",
                          "  pooling_param {\n    pool: MAX\n    kernel_size: 2\n    stride: 2\n  }\n"))
        bottom = f"pool{block}"
    for name, width in (("fc6", fc_width), ("fc7", fc_width), last):
        out.append(_layer(name, "InnerProduct", bottom, name,
                          learn(name) + f"  inner_product_param {{\n    num_output: {width}\n{fill(name)}  }}\n"))
        bottom = name
        if name in ("fc6", "fc7"):
            n = name[2:]
            out.append(_layer(f"relu{n}", "ReLU", bottom, bottom))
            if dropout:
                out.append(_layer(f"drop{n}", "Dropout", bottom, bottom,
                                  f"  dropout_param {{\n    dropout_ratio: {dropout}\n  }}\n"))
    return out


def deploy_text(config, batch=1, size=224, filler=None):
    """The deploy prototxt of `config` (a key of CONFIGS) as text; with `filler` (a key of FILLERS), the
    train_val body: learnable layers get fillers and lr/decay multipliers."""
    out = [f"# {TITLES[config]}, Simonyan & Zisserman, Table 1. Generated by tools/make_netdefs.py.\n",
           f'name: "{config.upper().replace("_LRN", "-LRN")}"\n']
    if filler is None:
        out.append('layer {\n  name: "data"\n  type: "Input"\n  top: "data"\n'
                   f"  input_param {{ shape {{ dim: {batch} dim: 3 dim: {size} dim: {size} }} }}\n}}\n")
    else:
        out[0] += ("# Stages select the training scale S: none = S 256 (Q 256), \"s384\" = S 384 (Q 384),\n"
                   "# \"jitter\" = S in [256, 512] (Q 384); set them with train_state { stage: ... }.\n")
        out.extend(_data_layers())
    learn = _LEARN if filler else ""
    fill = (FILLERS[filler] + _BIAS) if filler else ""
    out.extend(body_layers(config, lambda name: learn, lambda name: fill))
    bottom = "fc8"
    if filler is None:
        out.append(_layer("prob", "Softmax", bottom, "prob"))
    else:
        out.append('layer {\n  name: "loss"\n  type: "SoftmaxWithLoss"\n  bottom: "fc8"\n  bottom: "label"\n'
                   '  top: "loss"\n}\n')
        for name, k in (("accuracy", 1), ("accuracy_top5", 5)):
            out.append(f'layer {{\n  name: "{name}"\n  type: "Accuracy"\n  bottom: "fc8"\n  bottom: "label"\n'
                       f'  top: "{name}"\n  accuracy_param {{\n    top_k: {k}\n  }}\n'
                       "  include {\n    phase: TEST\n  }\n}\n")
    return "".join(out)


def train_val_text(config, filler="gaussian"):
    return deploy_text(config, filler=filler)


# The schedules of §3.1: S=256 from scratch (lr 1e-2, divided by 10 when validation accuracy stops
# improving, 3 times, stopped at 370K iterations); S=384 initialised from S=256 with lr 1e-3; scale
# jittering fine-tuned from S=384 (lr 1e-3).
SCHEDULES = {
    "s256": (0.01, "from scratch (net A), or with --init-from-a for B-E (see README)"),
    "s384": (0.001, "initialise with --weights <the S=256 model>"),
    "jitter": (0.001, "initialise with --weights <the S=384 model>"),
}


def solver_text(config, schedule):
    lr, how = SCHEDULES[schedule]
    stage = "" if schedule == "s256" else f'train_state {{\n  stage: "{schedule}"\n}}\ntest_state {{\n  stage: "{schedule}"\n}}\n'
    return (f"# {TITLES[config]}: training scale {schedule} ({how}). Generated by tools/make_netdefs.py.\n"
            f'net: "netdefs/{config}/train_val.prototxt"\n{stage}'
            "test_iter: 1000          # 50,000 validation images / batch 50\n"
            "test_interval: 5000\n"
            "test_initialization: false\n"
            f"base_lr: {lr}\n"
            'lr_policy: "plateau"     # divide by 10 when validation accuracy stops improving\n'
            "gamma: 0.1\n"
            'plateau_output: "accuracy"\n'
            "plateau_patience: 2\n"
            "plateau_max_drops: 3\n"
            "max_iter: 370000        # 74 epochs of batch 256\n"
            "momentum: 0.9\n"
            "weight_decay: 0.0005\n"
            "display: 20\n"
            "average_loss: 20\n"
            "snapshot: 10000\n"
            f'snapshot_prefix: "snapshots/{config}_{schedule}"\n'
            'type: "SGD"\n')


# -- laptop scale: the nets `vggtool reproduce` trains (netdefs/mini/, solver/mini/) ---------------------------
# The six configurations with Table 1's pattern (same depths, 3x3 and C's 1x1 convolutions, five 2x2 poolings)
# and every width divided by 8 (conv 8, 16, 32, 64, 64; FC 512), 10 classes, one grayscale channel, and a
# 32x32 crop: 224 / 7, so that the five poolings leave 1x1 as they leave 7x7 in the paper. The training
# scales keep the paper's ratios to the crop (S 256, 384, [256, 512] = 224 x 8/7, 12/7, [8/7, 16/7]):
# S 36, S 54, jitter [36, 72], tested at Q 36, 54, 54. Data: `data_prep scaled_digits` (see its --help).
MINI = {
    "widths": {block: width // 8 for block, width in _B.items()},
    "fc": 512,
    "dropout": 0,  # none: see MINI_SOLVER's comment
    "mirror": False,  # digits are not mirror-symmetric: see MINI_SOLVER's comment
    "classes": 10,
    "crop": 32,
    "channels": 1,
    "mean_file": "repro_mean.binaryproto",  # compute_image_mean --per_channel_only of the training set
    "scale": 0.0125,  # pixels 0..255 minus the mean, times 1/80: inputs of order 1
    "train": ("repro_train_lmdb", 32),  # (LMDB, batch)
    "test": ("repro_holdout_lmdb", 48),  # held-out training digits: the plateau policy watches these
    "scales": {
        "s36": ("smallest_side: 36", "test_smallest_side: 36"),
        "s54": ("smallest_side: 54", "test_smallest_side: 54"),
        "jitter": ("smallest_side_min: 36\n    smallest_side_max: 72", "test_smallest_side: 54"),
    },
}
# One training recipe for every mini net and scale (the paper's section 3.1, sized for the budget): SGD,
# momentum 0.9, weight decay 5e-4, the rate divided by 10 when held-out accuracy stops improving (at most 3
# times), batch 32; A and A-LRN from random weights, the deeper nets from A. Departures, each chosen on
# TRAINING loss only (never on validation error) and applied to every net alike. (1)-(3) on mini-A (s36,
# seed 1) before any full run:
# (1) He (Caffe's msra: Glorot's procedure with the factor 2 a ReLU needs) instead of N(0, 0.1^2) for the
#     nets trained from scratch. N(0, 0.1^2) makes fc8's logits std ~2.9 at these fan-ins (9..576; initial
#     loss 5.8 instead of ln 10); SGD's quickest way down is to push every bias negative, which kills the
#     ReLUs and leaves mini-A at chance for good (2.306 after 600 iterations). Caffe's xavier (variance
#     1/fan_in) halves the signal at every ReLU: mini-A's training loss was still 2.297 after 600 iterations,
#     against 2.181 with msra (1.211 after 2,000).
# (2) No dropout: with dropout 0.5 on the 512-wide fc6/fc7 (fed by a 64-d pool5) mini-A stays at chance
#     (2.305) for 1,200 iterations with He or Glorot weights at lr 1e-2; dropout 0.25 barely moves by 600.
#     Checked again at the rate of (4), lr 3e-3, after the second full run: with dropout 0.5 mini-A's training
#     loss is 2.07 and mini-D's 2.305 (chance) after 1,600 iterations, against 0.90 and 0.98 without it
#     after 1,500 (the loss with dropout is measured with dropout on, but D has not left chance).
# (3) No mirroring: a mirrored digit is another glyph (the paper's flips are of photographs); with msra,
#     training loss after 1,000 iterations 1.54 without flips against 1.94 with them.
# Also tried then and not taken: lr 0.02 or 0.05 (stuck at 2.31), batch 16 (stuck at 2.30 for 1,500
# iterations), widths / 4 instead of / 8 (stuck at 2.30 for 1,000).
# (4) and (5) after the first published run (lr 1e-2, 1,200 iterations), where all 9 cells of D and E
# without pre-training and 7 of D and E from A ended at chance (training loss 2.303), each of the 16 with
# the rate cut two or three times by the plateau policy. Checked on training loss (s36 unless said,
# 1,500 iterations):
# (4) lr 3e-3 instead of 1e-2. At 1e-2, D from He weights stays at 2.30 for 1,500 iterations even with the
#     rate held fixed; at 3e-3 (held fixed too) it reaches 0.98 (1e-3: 1.42), E 1.61 (leaving chance at ~700) and A 0.90
#     (1e-2: 0.87; 1.25e-3: 1.15). 3e-3 is the largest of the rates tried at which A, D and E all train.
#     (The paper's 1e-2 is for batch 256; the square-root rule for batch 32 gives 3.5e-3, the linear
#     rule 1.25e-3.)
# (5) plateau_start 0.2: no test round counts towards a drop until the best held-out accuracy has passed
#     0.2, twice chance and > 5 standard deviations of a chance score on 286 images, so the rate cannot
#     be cut (freezing a net at chance) before the net has left chance. With (4) and (5): D from He
#     weights (seed 2) 0.81 at 1,500, no drop; E at S 54 from A (seed 1; at chance in the first run) 1.97,
#     no drop.
# 1,600 iterations instead of 1,200: what the budget allows after im2col's C kernel (plan.Budget).
# `vggtool reproduce` sets max_iter, test_interval and the stage.
MINI_SOLVER = {
    "base_lr": "0.003",
    "momentum": "0.9",
    "weight_decay": "0.0005",
    "max_iter": "1600",
    "test_interval": "100",
    "test_iter": "6",  # 288 held-out images / batch 48
    "plateau_patience": "3",
    "plateau_start": "0.2",  # (5): no drop before the held-out accuracy has passed twice chance
    "plateau_max_drops": "3",
}


def _mini_data_layers():
    out = []
    m = MINI
    for phase, (source, batch) in (("TRAIN", m["train"]), ("TEST", m["test"])):
        mirror = "true" if phase == "TRAIN" and m["mirror"] else "false"
        for stage, transforms in m["scales"].items():
            scale = transforms[0] if phase == "TRAIN" else transforms[1]
            rule = (f"    stage: \"{stage}\"\n" if stage != "s36" else
                    "".join(f"    not_stage: \"{s}\"\n" for s in m["scales"] if s != "s36"))
            out.append(
                f'layer {{\n  name: "data"\n  type: "Data"\n  top: "data"\n  top: "label"\n'
                f"  include {{\n    phase: {phase}\n{rule}  }}\n"
                f"  transform_param {{\n    mirror: {mirror}\n    crop_size: {m['crop']}\n"
                f"    mean_file: \"{m['mean_file']}\"\n    scale: {m['scale']}\n    force_gray: true\n"
                f"    {scale}\n  }}\n"
                f'  data_param {{\n    source: "{source}"\n    batch_size: {batch}\n    backend: LMDB\n  }}\n}}\n')
    return out


def mini_text(config, filler=None):
    """The laptop-scale deploy (filler None) or train_val (filler a key of FILLERS) prototxt of `config`."""
    m = MINI
    title = TITLES[config].split(" (")[0]
    out = [f"# {title}, laptop scale for `vggtool reproduce`: Table 1's layers, widths / 8, 32x32 gray input.\n"
           "# Generated by tools/make_netdefs.py.\n",
           f'name: "MINI_{config[4:].upper().replace("_LRN", "-LRN")}"\n']
    if filler is None:
        out.append('layer {\n  name: "data"\n  type: "Input"\n  top: "data"\n'
                   f"  input_param {{ shape {{ dim: 1 dim: {m['channels']} dim: {m['crop']} dim: {m['crop']} }} }}\n}}\n")
    else:
        out[0] += ("# Stages select the training scale S: none = S 36 (Q 36), \"s54\" = S 54 (Q 54),\n"
                   "# \"jitter\" = S in [36, 72] (Q 54). Paths are relative to the run folder.\n")
        out.extend(_mini_data_layers())
    learn = _LEARN if filler else ""
    fill = (FILLERS[filler] + _BIAS) if filler else ""
    out.extend(body_layers(config, lambda name: learn, lambda name: fill, last=("fc8", m["classes"]),
                           widths=m["widths"], fc_width=m["fc"], dropout=m["dropout"]))
    if filler is None:
        out.append(_layer("prob", "Softmax", "fc8", "prob"))
    else:
        out.append('layer {\n  name: "loss"\n  type: "SoftmaxWithLoss"\n  bottom: "fc8"\n  bottom: "label"\n'
                   '  top: "loss"\n}\n')
        for name, k in (("accuracy", 1), ("accuracy_top5", 5)):
            out.append(f'layer {{\n  name: "{name}"\n  type: "Accuracy"\n  bottom: "fc8"\n  bottom: "label"\n'
                       f'  top: "{name}"\n  accuracy_param {{\n    top_k: {k}\n  }}\n'
                       "  include {\n    phase: TEST\n  }\n}\n")
    return "".join(out)


def mini_solver_text(config):
    s = MINI_SOLVER
    return (f"# {TITLES[config].split(' (')[0]}, laptop scale: the one recipe of `vggtool reproduce` (every net,\n"
            "# every scale; the run sets the stage). Generated by tools/make_netdefs.py.\n"
            f'net: "netdefs/mini/{config}/train_val.prototxt"\n'
            f"test_iter: {s['test_iter']}\n"
            f"test_interval: {s['test_interval']}\n"
            "test_initialization: false\n"
            f"base_lr: {s['base_lr']}\n"
            'lr_policy: "plateau"     # divide by 10 when held-out accuracy stops improving\n'
            "gamma: 0.1\n"
            'plateau_output: "accuracy"\n'
            f"plateau_patience: {s['plateau_patience']}\n"
            f"plateau_start: {s['plateau_start']}\n"
            f"plateau_max_drops: {s['plateau_max_drops']}\n"
            f"max_iter: {s['max_iter']}\n"
            f"momentum: {s['momentum']}\n"
            f"weight_decay: {s['weight_decay']}\n"
            "display: 25\n"
            "average_loss: 25\n"
            "snapshot: 0\n"
            "snapshot_after_train: false\n"
            f'snapshot_prefix: "snapshots/mini_{config}"\n'
            "random_seed: 1\n"
            'type: "SGD"\n')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--out", default=os.path.join(root, "netdefs"))
    parser.add_argument("--solver-out", default=os.path.join(root, "solver"))
    args = parser.parse_args(argv)
    files = {}
    for config in CONFIGS:
        files[os.path.join(args.out, config, "deploy.prototxt")] = deploy_text(config)
        files[os.path.join(args.out, config, "train_val.prototxt")] = train_val_text(config, "gaussian")
        files[os.path.join(args.out, config, "train_val_xavier.prototxt")] = train_val_text(config, "xavier")
        for schedule in SCHEDULES:
            files[os.path.join(args.solver_out, f"{config}_{schedule}.prototxt")] = solver_text(config, schedule)
        files[os.path.join(args.out, "mini", config, "deploy.prototxt")] = mini_text(config)
        files[os.path.join(args.out, "mini", config, "train_val.prototxt")] = mini_text(config, "gaussian")
        files[os.path.join(args.out, "mini", config, "train_val_msra.prototxt")] = mini_text(config, "msra")
        files[os.path.join(args.solver_out, "mini", f"{config}.prototxt")] = mini_solver_text(config)
    for path, text in files.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
