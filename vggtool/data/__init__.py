"""Every dataset reader, and the transforms between a stored image and a net input:
datum (Caffe Datum <-> image, LMDB access), lmdb_records / lmdb_check (reading and vetting an LMDB),
imagelist (the one list-file grammar), imagefolder (ImageFolder layouts), imagesets (image sets with
labels for extraction: lists, LMDB, VOC), samples (`--data` read one image at a time), transform
(transform_param, the one isotropic rescale), mean (the one mean loader), recorded_transform (the
transform a model was trained with).
"""


def _silence_opencv():
    """OpenCV's own log lines ('[ WARN:0@..] global grfmt_png.cpp ... readHeader') would repeat on stderr
    for every undecodable record, every epoch; vggtool reports such records itself, once each, with a
    count. The one place vggtool sets OpenCV's log level (every image decode goes through vggtool.data)."""
    import cv2

    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None:
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    elif hasattr(cv2, "setLogLevel"):  # older OpenCV builds
        cv2.setLogLevel(0)


_silence_opencv()
