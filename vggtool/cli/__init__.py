"""`vggtool` command line: Caffe's subcommands (train, test, time, device_query) plus VGG's own.

Each subcommand lives in its own module of this package with `HELP`, `add_arguments(parser)` and
`run(args) -> exit code`. Caffe's single-dash spelling (`-solver=x`, `-gpu 0`) is accepted too.
`vggtool --set KEY=VALUE ... COMMAND` overrides settings (vggtool.config) for that command.
"""
import argparse
import importlib
import re
import sys

from ..config import apply_process_defaults

# The entry points' one change to the environment, made before anything below imports NumPy (OpenBLAS
# reads it when it loads); see vggtool.config.apply_process_defaults.
apply_process_defaults()

from .. import config  # noqa: E402
from ..errors import VggtoolError  # noqa: E402

# subcommand name -> module (in this package)
COMMANDS = {
    "demo": "demo",
    "device_query": "device_query",
    "train": "train",
    "plot": "plot",
    "time": "time",
    "test": "test",
    "convolutionalize": "convolutionalize",
    "fuse": "fuse",
    "classify": "classify",
    "extract": "extract",
    "svm": "svm",
    "localize": "localize",
    "export": "export",
    "convert": "convert",
    "draw": "draw",
    "reproduce": "reproduce",
}


def normalise_argv(argv):
    """Accept Caffe's `-flag=value` / `-flag value` beside `--flag value`."""
    out = []
    for arg in argv:
        m = re.fullmatch(r"-([A-Za-z][\w-]+)(=.*)?", arg)
        if m and len(m.group(1)) > 1:
            arg = "--" + m.group(1) + (m.group(2) or "")
        out.append(arg)
    return out


_TRUE, _FALSE = ("true", "t", "yes", "y", "1"), ("false", "f", "no", "n", "0")


def gflags_booleans(argv, parser):
    """Caffe's gflags spellings of boolean flags for `parser`: `--flag=true/false` and `--noflag`.

    `--shuffle=true` becomes `--shuffle`, `--shuffle=false` (or `--noshuffle`) becomes nothing for a flag
    that is off by default, and `--flip=false` becomes `--no-flip` for a --flip/--no-flip pair."""
    on, off = {}, {}  # option string -> the tokens that mean "set it" / "unset it"
    for action in parser._actions:
        if isinstance(action, argparse.BooleanOptionalAction):
            for opt in action.option_strings:
                if opt.startswith("--no-"):
                    continue
                negative = "--no-" + opt[2:]
                on[opt], off[opt] = [opt], [negative]
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            for opt in action.option_strings:
                on[opt], off[opt] = [opt], []
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if eq and name in on and value.lower() in _TRUE + _FALSE:
            out.extend(on[name] if value.lower() in _TRUE else off[name])
        elif not eq and arg.startswith("--no") and not arg.startswith("--no-") and "--" + arg[4:] in on:
            out.extend(off["--" + arg[4:]])
        else:
            out.append(arg)
    return out


def split_settings(argv):
    """The leading `--set KEY=VALUE` options (before the subcommand) and the rest of argv."""
    assignments, rest = [], list(argv)
    while rest and (rest[0] == "--set" or rest[0].startswith("--set=")):
        option = rest.pop(0)
        if option == "--set":
            if not rest:
                raise VggtoolError("--set needs KEY=VALUE")
            option = "--set=" + rest.pop(0)
        assignments.append(option[len("--set="):])
    return assignments, rest


def run_subcommands(prog, description, table, package, argv=None):
    """Parse `argv` as `prog [--set KEY=VALUE ...] SUBCOMMAND ...` over `table` (name -> module of
    `package`), run it with those settings (vggtool.config), and turn a VggtoolError into one message on
    stderr and exit code 1 (no traceback)."""
    argv = normalise_argv(sys.argv[1:] if argv is None else list(argv))
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help=f"a setting for this command ({', '.join(config.KEYS)}; README, The engine); "
                             "overrides its VGGTOOL_* environment variable")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, module_name in table.items():
        module = importlib.import_module(f"{package}.{module_name}")
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
        modules[name] = module
    try:
        assignments, argv = split_settings(argv)
        # the environment is read here, once: a bad VGGTOOL_* value fails before any work
        settings = config.defaults().replace(**config.parse_assignments(assignments))
    except VggtoolError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in modules:
        at = argv.index(command)
        argv = argv[:at + 1] + gflags_booleans(argv[at + 1:], sub.choices[command])
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    previous = config.set_defaults(settings)
    try:
        return int(modules[args.command].run(args) or 0)
    except VggtoolError as e:
        print(f"{prog} {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        config.set_defaults(previous)  # (in-process callers, e.g. tests, get theirs back)


def main(argv=None):
    return run_subcommands("vggtool", "Caffe-style VGG toolbox", COMMANDS, __name__, argv)


if __name__ == "__main__":
    sys.exit(main())
