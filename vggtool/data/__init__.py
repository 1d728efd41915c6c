"""Datasets: Caffe Datum records in LMDB, image lists, and the data layers' transforms."""


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
