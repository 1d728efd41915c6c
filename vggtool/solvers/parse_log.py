"""Read a training log in Caffe's format back into rows, the way Caffe's tools/extra/parse_log.py does:
the latest "Iteration N" seen gives the iteration, the latest "lr = X" the learning rate, and each run of
"Train net output" / "Test net output" lines for one iteration forms one row."""
import re

ITERATION = re.compile(r"Iteration (\d+)")
TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([.\deE+-]+|nan|inf|-inf)")
TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([.\deE+-]+|nan|inf|-inf)")
LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?)")


def parse_log(path):
    """Return (train_rows, test_rows): lists of dicts with NumIters, LearningRate and one key per output."""
    train, test = [], []
    rows = {"train": None, "test": None}
    iteration, lr, lrs = None, float("nan"), {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = ITERATION.search(line)
            if m:
                iteration = int(m.group(1))
            if iteration is None:
                continue
            m = LEARNING_RATE.search(line)
            if m:
                lr = float(m.group(1))
                lrs.setdefault(iteration, lr)
            for kind, regex, out in (("train", TRAIN_OUTPUT, train), ("test", TEST_OUTPUT, test)):
                m = regex.search(line)
                if not m:
                    continue
                row = rows[kind]
                if row is None or row["NumIters"] != iteration:
                    row = rows[kind] = {"NumIters": iteration, "LearningRate": lr}
                    out.append(row)
                row[m.group(2)] = float(m.group(3))
    # Caffe logs "lr = X" after the train outputs of the same iteration: give a row its own iteration's rate
    for row in train + test:
        row["LearningRate"] = lrs.get(row["NumIters"], row["LearningRate"])
    return train, test
