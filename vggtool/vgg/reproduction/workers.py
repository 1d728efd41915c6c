"""Cells trained and scored in parallel: `jobs` worker processes, one BLAS thread each.

The mini nets are too small for two BLAS threads to pay (most of an iteration is per-layer work on one
thread), so a 2-core machine does twice the work when it runs two cells at once, each single-threaded.
A cell is given to a worker as soon as what it starts from is trained (the deeper nets start from the
same seed's A), in the plan's order. A worker writes the cell's files (model, record, log, scores) itself,
as the in-process path does, and returns the record, the cost entries and its progress lines; only this
process writes costs.json and prints, so lines never interleave mid-line and the files have one writer.
"""
import concurrent.futures as futures
import multiprocessing
import os

from . import plan

# Set in this process's environment while the pool lives: spawned workers inherit it before NumPy loads.
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "VGGTOOL_NUM_THREADS": "1", "OPENBLAS_THREAD_TIMEOUT": "4"}


_worker_run = {}  # in a worker: (out, budget, seeds) -> its Run, the inputs loaded once for all its cells


def _cell_job(out, budget, seeds, cell, index, total):
    """In a worker: train and score one cell of the run in `out`; returns (record, costs, lines)."""
    from .run import Costs, Run

    key = (out, tuple(sorted(budget.items())), seeds)
    lines = []
    if key not in _worker_run:
        run = Run(out, plan.Budget(**budget), seeds, say=lines.append, costs=Costs(None))
        run.load_inputs()
        _worker_run[key] = run
    run = _worker_run[key]
    run.say, run.costs = lines.append, Costs(None)  # this cell's lines and costs only
    run.train(cell, index, total)
    run.score(cell)
    return run.records[cell.name], run.costs.steps, lines


class _Environment:
    """os.environ with `values` set, restored on exit."""

    def __init__(self, values):
        self.values, self.saved = values, {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_cells(run, cells, jobs):
    """Train and score `cells` of `run` with `jobs` worker processes; records and costs land in `run`."""
    total = len(cells)
    index = {cell.name: i for i, cell in enumerate(cells, start=1)}
    pending = [c for c in cells if not run.record_path(c).exists()]
    for cell in cells:  # finished in an earlier session: load, and score what is missing, here
        if cell not in pending:
            run.train(cell, index[cell.name], total)
            run.score(cell)
    names = {c.name for c in cells}
    done = {c.name for c in cells if c not in pending}
    running = {}
    context = multiprocessing.get_context("spawn")  # no fork: the parent may hold BLAS threads
    with _Environment(WORKER_ENV), futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        while pending or running:
            for cell in list(pending):
                if len(running) >= jobs:
                    break
                source = plan.source_cell(cell)
                if source is None or source.name in done or source.name not in names:
                    pending.remove(cell)
                    job = pool.submit(_cell_job, str(run.out), run.budget.as_dict(), run.seeds, cell,
                                      index[cell.name], total)
                    running[job] = cell
            if not running:  # nothing can start: what the rest needs is not in this run
                break
            finished, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for job in finished:
                cell = running.pop(job)
                record, costs, lines = job.result()
                run.records[cell.name] = record
                for step, entry in costs.items():
                    run.costs.record(step, entry["tag"], entry["wall_s"], entry["cpu_s"])
                for line in lines:
                    run.say(line)
                done.add(cell.name)
    for cell in pending:  # only if their A is missing from `cells`: the in-process path says why
        run.train(cell, index[cell.name], total)
