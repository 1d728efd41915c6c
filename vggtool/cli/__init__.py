"""`vggtool` command line: Caffe's subcommands (train, test, time, device_query) plus VGG's own.

Each subcommand lives in its own module of this package with `HELP`, `add_arguments(parser)` and
`run(args) -> exit code`. Caffe's single-dash spelling (`-solver=x`, `-gpu 0`) is accepted too.
"""
import argparse
import importlib
import re
import sys

from ..errors import VggtoolError

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


def run_subcommands(prog, description, table, package, argv=None):
    """Parse `argv` as `prog SUBCOMMAND ...` over `table` (name -> module of `package`), run it, and turn
    a VggtoolError into one message on stderr and exit code 1 (no traceback)."""
    argv = normalise_argv(sys.argv[1:] if argv is None else list(argv))
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, module_name in table.items():
        module = importlib.import_module(f"{package}.{module_name}")
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
        modules[name] = module
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in modules:
        at = argv.index(command)
        argv = argv[:at + 1] + gflags_booleans(argv[at + 1:], sub.choices[command])
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except VggtoolError as e:
        print(f"{prog} {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv=None):
    return run_subcommands("vggtool", "Caffe-style VGG toolbox", COMMANDS, __name__, argv)


if __name__ == "__main__":
    sys.exit(main())
