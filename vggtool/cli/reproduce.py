"""`vggtool reproduce --out DIR [--quick] [--seeds N] [--jobs N] [--report-only]`: the paper's Tables 3-6 and its
initialisation study at laptop scale, from nothing (the bundled digits) to DIR/REPORT.md
(vggtool.vgg.reproduction), N cells at a time.
A stopped run continues where it stopped when given the same DIR; --report-only writes the report of a
finished one again."""
import os

HELP = "reproduce the paper's findings (Tables 3-6, initialisation) at laptop scale: DIR/REPORT.md"


def add_arguments(parser):
    parser.add_argument("--out", required=True, help="run folder (kept: a rerun continues where it stopped)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run (a few digits per class, a few iterations) that checks the pipeline")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 3; 1 with --quick)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="cells trained at once, each in its own process on one thread (default: the CPUs "
                             "this process may use)")
    parser.add_argument("--report-only", action="store_true",
                        help="write DIR/REPORT.md again from a finished run's stored results: nothing is trained or "
                             "scored, and the run's elapsed time is left as it was")


def run(args):
    from ..vgg.reproduction import plan
    from ..vgg.reproduction.run import Run

    from ..errors import VggtoolError
    from ..io.files import check_output_path

    check_output_path(args.out, "--out", folder=True)
    if args.report_only and not os.path.exists(os.path.join(args.out, "started.json")):
        raise VggtoolError(f"--out {args.out}: holds no run to report on (no started.json); --report-only needs a "
                           "finished run")
    budget = plan.QUICK if args.quick else plan.FULL
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    jobs = args.jobs if args.jobs is not None else len(os.sched_getaffinity(0))
    job = Run(args.out, budget, seeds, say=lambda line: print(line, flush=True), jobs=jobs)
    job.command = (f"vggtool reproduce --out {args.out}" + (" --quick" if args.quick else "")
                   + (f" --seeds {args.seeds}" if args.seeds is not None else "")
                   + (f" --jobs {args.jobs}" if args.jobs is not None else ""))
    if args.report_only:
        job.report_only()
    else:
        job.run()
    return 0
