"""Folders as datasets, as PyTorch's ImageFolder reads them: ROOT/<class>/.../<image> gives the class
index of the subfolder's position among the sorted subfolder names; a folder holding images directly
(no class subfolders) is a set of unlabelled images.

Image files are recognised by extension (torchvision's list); paths are relative to ROOT, '/'-separated
and sorted, so the same folder always gives the same list. A labels file holds one class name a line, in
index order (what `data_prep image_folder` writes beside the list; read by imagelist.read_names)."""
import os

from ..errors import VggtoolError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def images_under(folder, root):
    """Image files under `folder` (recursively, sorted), as '/'-separated paths relative to `root`."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            if is_image_file(name):
                out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return out


def _subfolders(root):
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def is_image_folder(path):
    """True for a folder (not an LMDB) that holds images, directly or in subfolders."""
    if not os.path.isdir(path) or os.path.exists(os.path.join(path, "data.mdb")):
        return False
    return any(is_image_file(n) for n in os.listdir(path)) or bool(_subfolders(path))


def folder_entries(root, classes=None):
    """(entries [(relative path, label)], class names) of ROOT/<class>/... .

    `classes`: the class names in index order (e.g. the training set's labels file), so a validation
    folder gets the same indices; a subfolder not among them is an error. Without it: the sorted
    subfolder names. A folder with images but no subfolders gives label -1 for each (unlabelled)."""
    if not os.path.isdir(root):
        raise VggtoolError(f"image folder not found: {root}")
    folders = _subfolders(root)
    if not folders:
        images = [n for n in sorted(os.listdir(root)) if is_image_file(n)]
        if not images:
            raise VggtoolError(f"{root}: no images and no class subfolders")
        return [(n, -1) for n in images], None
    loose = [n for n in os.listdir(root) if is_image_file(n)]
    if loose:
        raise VggtoolError(f"{root}: holds class subfolders and also images directly ({loose[0]}, ...); put "
                           f"every image in its class folder")
    if classes is None:
        classes = folders
    index = {name: i for i, name in enumerate(classes)}
    entries = []
    for name in folders:
        if name not in index:
            raise VggtoolError(f"{root}: subfolder '{name}' is not one of the {len(classes)} classes given "
                               f"(first: {', '.join(classes[:5])})")
        images = images_under(os.path.join(root, name), root)
        if not images:
            raise VggtoolError(f"{root}: class folder '{name}' holds no images "
                               f"({', '.join(IMAGE_EXTENSIONS)})")
        entries.extend((path, index[name]) for path in images)
    return entries, list(classes)
