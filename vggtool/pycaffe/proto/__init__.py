"""`caffe.proto.caffe_pb2` for pycaffe scripts (`from vggtool.pycaffe.proto import caffe_pb2`)."""
from ...proto import caffe_pb2  # noqa: F401
