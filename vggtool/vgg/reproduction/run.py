"""The whole reproduction, from nothing to DIR/REPORT.md, in one process:

data (data_prep scaled_digits -> convert_imageset -> compute_image_mean) -> for each seed, each cell:
train (A first: the deeper nets start from it) -> score (dense at the scales the tables need, multi-crop
for Table 5) -> tables, findings, plots, report.

Every finished step is kept in DIR (data/, models/<cell>.caffemodel + .json + .log,
scores/<cell>/<method>_q<Q>.npz, costs.json), so a stopped run continues where it stopped; DIR/plan.json
pins the run size, and a DIR made with another size is refused."""
import datetime
import json
import time
from pathlib import Path

from .. import evaluate
from ... import atomic_files
from ...errors import VggtoolError
from . import plan, scoring, training

VAL_DB, TRAIN_DB, HOLDOUT_DB = "repro_val_lmdb", "repro_train_lmdb", "repro_holdout_lmdb"
MEAN_FILE = "repro_mean.binaryproto"
DATA_SCALE = 0.0125  # the mini nets' transform_param scale (MINI["scale"] in tools/make_netdefs.py)


class Costs:
    """Wall and CPU seconds of every step, by step name, each tagged with the table it was run for; kept in
    `path` (None: in memory only, as in a worker, which hands its entries to the run's own Costs)."""

    def __init__(self, path):
        self.path = None if path is None else Path(path)
        self.steps = json.loads(self.path.read_text()) if self.path and self.path.exists() else {}

    def record(self, step, tag, wall, cpu):
        self.steps[step] = {"tag": tag, "wall_s": wall, "cpu_s": cpu}
        if self.path is not None:
            atomic_files.atomic_write_bytes(str(self.path), json.dumps(self.steps, indent=1).encode())

    def by_tag(self):
        out = {}
        for step in self.steps.values():
            w, c = out.get(step["tag"], (0.0, 0.0))
            out[step["tag"]] = (w + step["wall_s"], c + step["cpu_s"])
        return out


class _timer:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def check_plan(out, budget):
    path = out / "plan.json"
    want = budget.as_dict()
    if path.exists():
        have = json.loads(path.read_text())
        if have != want:
            raise VggtoolError(f"--out {out}: holds a run of another size ({have.get('name')}: {have}); "
                               "use another --out folder")
    else:
        atomic_files.atomic_write_bytes(str(path), json.dumps(want, indent=1).encode())


def prepare_data(out, budget, costs, say):
    """Images, LMDBs and the training set's mean in out/data; returns {split: image count}."""
    from data_prep.cli import main as data_prep
    from data_prep.scaled_digits import make_scaled_digits

    data = out / "data"
    counts_file = data / "counts.json"
    if counts_file.exists():
        return json.loads(counts_file.read_text())
    data.mkdir(parents=True, exist_ok=True)
    with _timer() as t:
        say("data: data_prep scaled_digits (renders train,holdout,val = %s)" % budget.renders)
        counts = make_scaled_digits(str(data / "images"), per_class=budget.per_class, renders=budget.renders)
        for split, db in (("train", TRAIN_DB), ("holdout", HOLDOUT_DB), ("val", VAL_DB)):
            if (data / db).exists():
                continue
            argv = ["convert_imageset", "--gray", str(data / "images"), str(data / "images" / f"{split}.txt"),
                    str(data / db)]
            say("$ data_prep " + " ".join(argv))
            if data_prep(argv):
                raise VggtoolError(f"data_prep convert_imageset failed for {split}")
        argv = ["compute_image_mean", "--per_channel_only", str(data / TRAIN_DB), str(data / MEAN_FILE)]
        say("$ data_prep " + " ".join(argv))
        if data_prep(argv):
            raise VggtoolError("data_prep compute_image_mean failed")
    costs.record("data", "data", t.wall, t.cpu)
    atomic_files.atomic_write_bytes(str(counts_file), json.dumps(counts).encode())
    return counts


def score_plan(cell):
    """[(method, Q, tag)] the tables and plots need from this cell."""
    row = (cell.net, cell.scale)
    default = cell.init == plan.default_init(cell.net)
    table3 = default and row in plan.TABLE3_ROWS
    single_q = plan.SCALES[cell.scale][1]
    wanted = [("dense", single_q, "table3" if table3 else "init")]
    if default and row in plan.TABLE4_ROWS:
        wanted += [("dense", q, "table4") for q in plan.SCALES[cell.scale][2]]
    if default and cell.net == plan.SWEEP_NET:
        wanted += [("dense", q, "plots") for q in plan.SWEEP]
    if default and row in plan.FUSION_PAIR:
        wanted += [("multicrop", q, "table5") for q in plan.SCALES[cell.scale][2]]
    seen, out = set(), []
    for method, q, tag in wanted:
        if (method, q) not in seen:
            seen.add((method, q))
            out.append((method, q, tag))
    return out


class Run:
    """One run in DIR. `jobs` > 1 trains that many cells at once in worker processes (workers.py)."""

    def __init__(self, out, budget, seeds, say=print, costs=None, jobs=1):
        if seeds < 1:
            raise VggtoolError(f"--seeds must be at least 1, got {seeds}")
        if jobs < 1:
            raise VggtoolError(f"--jobs must be at least 1, got {jobs}")
        self.jobs = int(jobs)
        self.out = Path(out).resolve()
        self.budget, self.seeds, self.say = budget, int(seeds), say
        self.command = "vggtool reproduce"  # for the report; the CLI sets the exact line
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "models").mkdir(exist_ok=True)
        (self.out / "scores").mkdir(exist_ok=True)
        check_plan(self.out, budget)
        self.costs = costs if costs is not None else Costs(self.out / "costs.json")
        self.started = self._started()
        self.records = {}
        self._cache = {}

    def _started(self):
        """When and at which commit this DIR's run began (kept across resumed sessions)."""
        from .report import commit_of_checkout

        path = self.out / "started.json"
        if path.exists():
            return json.loads(path.read_text())
        started = {"time": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
                   "commit": commit_of_checkout()}
        atomic_files.atomic_write_bytes(str(path), json.dumps(started).encode())
        return started

    # -- paths ---------------------------------------------------------------------------------------------
    def model(self, cell):
        return self.out / "models" / f"{cell.name}.caffemodel"

    def record_path(self, cell):
        return self.out / "models" / f"{cell.name}.json"

    def log(self, cell):
        return self.out / "models" / f"{cell.name}.log"

    def score_path(self, cell, method, q):
        return self.out / "scores" / cell.name / f"{method}_q{q}.npz"

    # -- steps ---------------------------------------------------------------------------------------------
    def train(self, cell, index, total):
        if self.record_path(cell).exists():
            self.records[cell.name] = training.load_record(self.record_path(cell))
            return
        a = None
        a_cell = plan.source_cell(cell)
        if a_cell is not None:
            if a_cell.name not in self.records and self.record_path(a_cell).exists():  # trained by a worker
                self.records[a_cell.name] = training.load_record(self.record_path(a_cell))
            if self.records.get(a_cell.name, {}).get("status") != "ok":
                record = {"cell": cell.name, "net": cell.net, "scale": cell.scale, "init": cell.init,
                          "seed": cell.seed, "status": "skipped (A did not train)", "wall_s": 0.0, "cpu_s": 0.0}
                self.records[cell.name] = record
                return
            a = self.model(a_cell)
        tag = "table3" if (cell.net, cell.scale) in plan.TABLE3_ROWS and cell.init == plan.default_init(
            cell.net) else "init"
        record = training.train_cell(cell, self.out / "data", self.budget, self.counts["holdout"],
                                     self.model(cell), self.log(cell), a)
        training.save_record(self.record_path(cell), record)
        self.costs.record(f"train/{cell.name}", tag, record["wall_s"], record["cpu_s"])
        self.records[cell.name] = record
        self.say(f"[{index}/{total}] trained {cell.name}: {record['status']}, {record['wall_s']:.1f} s "
                 f"(CPU {record['cpu_s']:.1f} s)")

    def score(self, cell):
        if self.records[cell.name].get("status") != "ok":
            return
        todo = [(m, q, tag) for m, q, tag in score_plan(cell) if not self.score_path(cell, m, q).exists()]
        if not todo:
            return
        evaluator = scoring.make_evaluator(training.deploy_path(cell.net), self.model(cell),
                                           sorted({q for _, q, _ in todo}), self.mean, DATA_SCALE)
        self.score_path(cell, "dense", 0).parent.mkdir(exist_ok=True)
        for method, q, tag in todo:
            with _timer() as t:
                fn = scoring.dense_posteriors if method == "dense" else scoring.multicrop_posteriors
                p = fn(evaluator, self.val.images, q)
                evaluate.save_scores(str(self.score_path(cell, method, q)), p, self.val.labels, self.val.keys,
                                     q=q, mode=method)
            self.costs.record(f"score/{cell.name}/{method}_q{q}", tag, t.wall, t.cpu)
            self.say(f"    scored {cell.name} {method} Q={q}: {t.wall:.1f} s (CPU {t.cpu:.1f} s)")

    def posteriors(self, cell, method, q):
        """Stored posteriors (N, classes) of a cell, or None if it did not train or was not scored."""
        key = (cell.name, method, q)
        if key not in self._cache:
            path = self.score_path(cell, method, q)
            self._cache[key] = evaluate.load_scores(str(path))[0].astype("float64") if path.exists() else None
        return self._cache[key]

    def load_inputs(self):
        """The data's counts, the validation set and the mean, from out/data (made if missing)."""
        self.counts = prepare_data(self.out, self.budget, self.costs, self.say)
        data = self.out / "data"
        self.val = scoring.ValidationSet(data / VAL_DB)
        from vggtool.data.mean import load_mean

        self.mean = load_mean(mean_file=str(data / MEAN_FILE), channels=1)

    def stored_sessions(self):
        """The sessions elapsed.json holds (earlier runs of this DIR), [] before the first."""
        path = self.out / "elapsed.json"
        return json.loads(path.read_text())["sessions"] if path.exists() else []

    def elapsed(self, session_s):
        """Elapsed seconds of the whole run: earlier sessions' (elapsed.json) plus this one's, kept."""
        sessions = self.stored_sessions() + [{"elapsed_s": session_s, "jobs": self.jobs, "command": self.command}]
        atomic_files.atomic_write_bytes(str(self.out / "elapsed.json"),
                                        json.dumps({"sessions": sessions}, indent=1).encode())
        return sessions

    def report_only(self):
        """REPORT.md, its plots and results.json written again from a finished run's stored records and
        scores (at this checkout's report code): nothing is trained, scored or timed, and no session is
        added to elapsed.json. A run with cells left to train or score is an error naming the first."""
        cells = plan.cells(self.seeds)
        untrained = [c.name for c in cells if not self.record_path(c).exists()]
        if untrained:
            raise VggtoolError(f"{self.out}: --report-only needs a finished run, and {len(untrained)} of {len(cells)} "
                               f"cell(s) have not trained (the first: {untrained[0]}); run `vggtool reproduce "
                               f"--out {self.out}` without --report-only to finish them")
        for cell in cells:
            self.records[cell.name] = training.load_record(self.record_path(cell))
        unscored = [c.name for c in cells if self.records[c.name].get("status") == "ok"
                    and any(not self.score_path(c, m, q).exists() for m, q, _ in score_plan(c))]
        if unscored:
            raise VggtoolError(f"{self.out}: --report-only needs a finished run, and {len(unscored)} trained cell(s) "
                               f"are not scored yet (the first: {unscored[0]}); run without --report-only")
        self.load_inputs()
        self.sessions = self.stored_sessions()
        commands = [s["command"] for s in self.sessions if s.get("command")]
        self.command = commands[-1] if commands else \
            f"vggtool reproduce --out {self.out} (the command that ran it was not recorded)"
        from . import report
        path = report.write(self)
        self.say(f"wrote {path} from the stored results of {len(cells)} cells (nothing trained or scored)")
        return path

    def run(self):
        start = time.perf_counter()
        self.load_inputs()
        cells = plan.cells(self.seeds)
        if self.jobs > 1:
            from .workers import run_cells

            run_cells(self, cells, self.jobs)
        else:
            for i, cell in enumerate(cells, start=1):
                self.train(cell, i, len(cells))
                self.score(cell)
        self.sessions = self.elapsed(time.perf_counter() - start)
        from . import report
        path = report.write(self)
        self.say(f"wrote {path} ({time.perf_counter() - start:.0f} s in this session)")
        return path
