"""Datasets: Caffe Datum records in LMDB, image lists, and the data layers' transforms."""
