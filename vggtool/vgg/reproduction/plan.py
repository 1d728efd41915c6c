"""What `vggtool reproduce` runs: the cells (net, training scale, initialisation, seed), the test scales of
each table, and the two run sizes. Everything here was fixed before any run, from the paper's protocol and
the time budget (the budget was measured on training cost only, never on validation error)."""
from dataclasses import asdict, dataclass

NETS = ("vgg_a", "vgg_a_lrn", "vgg_b", "vgg_c", "vgg_d", "vgg_e")
LABEL = {"vgg_a": "A", "vgg_a_lrn": "A-LRN", "vgg_b": "B", "vgg_c": "C", "vgg_d": "D", "vgg_e": "E"}
DEPTH = {"vgg_a": 11, "vgg_a_lrn": 11, "vgg_b": 13, "vgg_c": 16, "vgg_d": 16, "vgg_e": 19}  # weight layers

# Training scales (the stages of netdefs/mini/*/train_val.prototxt), the paper's 256 / 384 / [256; 512] for
# a 224 crop, here for a 32 crop: (label, single test scale, the three test scales of Table 4).
# The paper's Q = {S-32, S, S+32} is +-1/7 of the crop: +-4 pixels here.
SCALES = {
    "s36": ("36", 36, (32, 36, 40)),
    "s54": ("54", 54, (50, 54, 58)),
    "jitter": ("[36;72]", 54, (36, 54, 72)),
}
SWEEP = (32, 36, 40, 50, 54, 58, 72)  # test scales of the error-against-Q plot (net D, every training scale)
SWEEP_NET = "vgg_d"

# Initialisations: the paper trains A (and A-LRN) from random weights and starts the deeper nets from A's
# first four conv and last three FC layers (the rest N(0, 0.1^2)); random initialisation by Glorot's
# procedure without pre-training is its alternative; plain N(0, 0.1^2) for a deep net is what the
# pre-training was meant to avoid. Here every random weight of A, A-LRN, the deeper nets' layers not taken
# from A, and the alternative is He's (Caffe's msra: Glorot's procedure with a ReLU's factor 2): at the mini
# widths N(0, 0.1^2) leaves even A at chance, and Caffe's xavier (1/fan_in) nearly so after 600 iterations
# (MINI_SOLVER in tools/make_netdefs.py). In the first full run the deeper nets' other layers were
# N(0, 0.1^2) as in the paper: D and E from A then ended at chance (training loss 2.303-2.304 after
# 1,200 iterations in all 4 such cells that had finished, the rate cut to 1e-4 by the plateau policy): by the variance
# argument of the "N(0, 0.1^2)" finding (tables.py) their 9 and 12 random layers multiply the signal's
# variance by ~100 and ~1,300, against ~9 for B's 6 and ~0.15 for C's 9 (three of them 1x1), which trained.
# That run was stopped after 10 cells, on these training losses; its validation scores were not read.
INITS = {
    "gaussian": "N(0, 0.1^2), no pre-training",
    "from_a": "conv1_1, conv2_1, conv3_1, conv3_2, fc6-fc8 from A (same seed), the rest He (msra)",
    "msra": "He (msra: Glorot's procedure for ReLUs), no pre-training",
}


@dataclass(frozen=True)
class Cell:
    net: str
    scale: str
    init: str
    seed: int

    @property
    def name(self):
        return f"{self.net}_{self.scale}_{self.init}_seed{self.seed}"

    @property
    def config(self):
        return (self.net, self.scale, self.init)


def default_init(net):
    return "msra" if net in ("vgg_a", "vgg_a_lrn") else "from_a"


def source_cell(cell):
    """The cell whose weights `cell` starts from (the same seed's A), or None."""
    if cell.init != "from_a":
        return None
    return Cell("vgg_a", "s36", default_init("vgg_a"), cell.seed)


# Table 3's rows (every cell trained with the paper's initialisation); the initialisation study adds these.
TABLE3_ROWS = [("vgg_a", "s36"), ("vgg_a_lrn", "s36"), ("vgg_b", "s36")] + [
    (net, scale) for net in ("vgg_c", "vgg_d", "vgg_e") for scale in SCALES]
TABLE4_ROWS = [row for row in TABLE3_ROWS if row[0] not in ("vgg_a", "vgg_a_lrn")]
INIT_ROWS = [("vgg_d", "s36", "from_a"), ("vgg_d", "s36", "msra"),
             ("vgg_e", "s36", "from_a"), ("vgg_e", "s36", "msra"), ("vgg_e", "s36", "gaussian")]
FUSION_PAIR = (("vgg_d", "jitter"), ("vgg_e", "jitter"))  # the paper's post-submission pair, fixed in advance
SUBMISSION7 = [("vgg_d", "s36"), ("vgg_d", "s54"), ("vgg_d", "jitter"), ("vgg_c", "s36"), ("vgg_c", "s54"),
               ("vgg_e", "s36"), ("vgg_e", "s54")]  # the 7-net ILSVRC submission of Table 6
METHODS = ("dense", "multicrop", "both")


def configs():
    """Every (net, scale, init) trained once per seed, A's first (the deeper nets start from it)."""
    out = [(net, scale, default_init(net)) for net, scale in TABLE3_ROWS]
    out += [row for row in INIT_ROWS if row not in out]
    return out


def cells(seeds):
    """All cells, seed by seed (a stopped run leaves whole seeds behind)."""
    return [Cell(net, scale, init, seed) for seed in range(1, seeds + 1) for net, scale, init in configs()]


@dataclass(frozen=True)
class Budget:
    """The size of a run. FULL's 1,600 iterations: with the recipe's lr 3e-3 mini-A, D and E leave chance
    after about 400, 500 and 700 iterations and their training loss is still falling at 1,500
    (MINI_SOLVER in tools/make_netdefs.py); 1,600 is what the budget allows. Measured milliseconds per
    iteration (batch 32, one BLAS thread and one thread for vggtool's passes, the workers' setting, idle
    machine, with im2col's C kernel): A 33, D 61, E 76; B and C lie between. One iteration of the 15
    configurations of a seed is about 0.9 s, so 3 seeds x 1,600 iterations ~ 4,300 CPU-s, about 36 min on
    two cores with two workers; scoring and data add a few minutes. (The first published run, 1,200
    iterations at lr 1e-2 before the C kernel, cost 4,073 CPU-s in all.) The report gives what the run
    really cost."""
    name: str
    per_class: int  # source digits per class (0: all 1,797)
    renders: str  # images per source digit: train,holdout,val
    iterations: int  # SGD iterations per cell (batch 32)
    test_interval: int  # held-out test (the plateau policy's input) every this many iterations

    def as_dict(self):
        return asdict(self)


FULL = Budget("full", per_class=0, renders="4,2,2", iterations=1600, test_interval=100)
QUICK = Budget("quick", per_class=12, renders="1,1,1", iterations=4, test_interval=2)
