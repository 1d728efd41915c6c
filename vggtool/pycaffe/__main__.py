"""Run a pycaffe script untouched, `import caffe` and all: `python -m vggtool.pycaffe script.py [args]`.

The modules of BVLC's python/caffe package (caffe, caffe.io, caffe.proto.caffe_pb2, caffe.draw, ...) are
registered as names of vggtool.pycaffe for the run; nothing is installed."""
import runpy
import sys


def alias_caffe_modules():
    import importlib

    import vggtool.pycaffe as pycaffe

    names = {"caffe": pycaffe}
    for sub in ("io", "draw", "coord_map", "net_spec", "classifier", "detector", "proto"):
        names[f"caffe.{sub}"] = importlib.import_module(f"vggtool.pycaffe.{sub}")
    names["caffe.proto.caffe_pb2"] = importlib.import_module("vggtool.proto.caffe_pb2")
    names["caffe.pycaffe"] = importlib.import_module("vggtool.pycaffe._net")
    names["caffe._caffe"] = pycaffe
    for name, module in names.items():
        sys.modules.setdefault(name, module)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    alias_caffe_modules()
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
