"""Caffe's files: prototxt text (prototxt.py), legacy formats upgraded on read (upgrade.py), the binary
wire format of .caffemodel, .solverstate and .binaryproto files (wire.py), and where input files are
found and how they are read safely (files.py)."""
