"""`data_prep` command line. Each tool is a module of this package with HELP, add_arguments and run."""
import sys

from vggtool.cli import run_subcommands

TOOLS = {
    "convert_imageset": "convert_imageset",
    "compute_image_mean": "compute_image_mean",
    "compute_color_stats": "compute_color_stats",
    "digits": "digits",
    "convert_voc": "convert_voc",
    "image_folder": "image_folder",
    "scaled_digits": "scaled_digits",
}


def main(argv=None):
    return run_subcommands("data_prep", "offline dataset tools for vggtool", TOOLS, "data_prep", argv)


if __name__ == "__main__":
    sys.exit(main())
