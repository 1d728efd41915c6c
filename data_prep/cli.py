"""`data_prep` command line. Each tool is a module of this package with HELP, add_arguments and run."""
import argparse
import importlib
import sys

from vggtool.cli import normalise_argv
from vggtool.errors import VggtoolError

TOOLS = {
    "convert_imageset": "convert_imageset",
    "compute_image_mean": "compute_image_mean",
    "compute_color_stats": "compute_color_stats",
    "digits": "digits",
    "convert_voc": "convert_voc",
}


def main(argv=None):
    argv = normalise_argv(sys.argv[1:] if argv is None else list(argv))
    parser = argparse.ArgumentParser(prog="data_prep", description="offline dataset tools for vggtool")
    sub = parser.add_subparsers(dest="tool", metavar="TOOL")
    modules = {}
    for name, module_name in TOOLS.items():
        module = importlib.import_module(f"data_prep.{module_name}")
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
        modules[name] = module
    args = parser.parse_args(argv)
    if not args.tool:
        parser.print_help()
        return 2
    try:
        return int(modules[args.tool].run(args) or 0)
    except VggtoolError as e:
        print(f"data_prep {args.tool}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"data_prep {args.tool}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
