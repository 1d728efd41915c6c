"""Caffe's schema (proto/caffe.proto) compiled for Python; regenerate with `python tools/gen_proto.py`."""
from . import caffe_pb2  # noqa: F401

__all__ = ["caffe_pb2"]
