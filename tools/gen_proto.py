#!/usr/bin/env python
"""Regenerate vggtool/proto/caffe_pb2.py from proto/caffe.proto.

Usage: python tools/gen_proto.py

Requires grpcio-tools (which bundles protoc). Exits non-zero on failure.
"""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join(REPO_ROOT, "proto")
PROTO_FILE = os.path.join(PROTO_DIR, "caffe.proto")
OUT_DIR = os.path.join(REPO_ROOT, "vggtool", "proto")


def well_known_include():
    """Directory holding google/protobuf/*.proto shipped with grpc_tools."""
    try:
        from importlib.resources import files

        return str(files("grpc_tools") / "_proto")
    except Exception:  # pragma: no cover - very old Pythons
        import pkg_resources

        return pkg_resources.resource_filename("grpc_tools", "_proto")


def run_protoc(extra_args):
    """Run grpc_tools' protoc on proto/caffe.proto; return its exit code."""
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        "-I" + PROTO_DIR,
        "-I" + well_known_include(),
    ] + list(extra_args) + [PROTO_FILE]
    return protoc.main(args)


def main():
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        sys.stderr.write("gen_proto: grpcio-tools is required (pip install grpcio-tools)\n")
        return 2
    if not os.path.isfile(PROTO_FILE):
        sys.stderr.write("gen_proto: %s not found\n" % PROTO_FILE)
        return 2
    os.makedirs(OUT_DIR, exist_ok=True)
    rc = run_protoc(["--python_out=" + OUT_DIR])
    if rc != 0:
        sys.stderr.write("gen_proto: protoc failed with exit code %d\n" % rc)
        return rc or 1
    print("gen_proto: wrote %s" % os.path.join(OUT_DIR, "caffe_pb2.py"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
