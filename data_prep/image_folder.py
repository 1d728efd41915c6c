"""image_folder: a folder of class subfolders (PyTorch's ImageFolder layout) -> an image list, a labels
file and, unless --list_only, the LMDB (through convert_imageset, with all its flags).

Class index = position of the subfolder's name among the sorted names, or among the names of --labels
when that file exists (give the training set's labels file when converting the validation folder, so both
use the same indices)."""
import os

from vggtool.data.imagefolder import folder_entries
from vggtool.data.imagelist import read_names
from vggtool.errors import VggtoolError
from vggtool.atomic_files import atomic_write_bytes

from .convert_imageset import add_common_arguments, convert

HELP = "convert a folder of class subfolders (ImageFolder layout) to a list, a labels file and an LMDB"


def add_arguments(p):
    p.add_argument("root", help="folder holding one subfolder of images per class")
    p.add_argument("db", help="output database folder")
    p.add_argument("--list", default=None, help="list file to write (default: DB_list.txt beside DB)")
    p.add_argument("--labels", default=None,
                   help="class names, one a line (default: DB_labels.txt); read instead of written when it exists")
    p.add_argument("--list_only", action="store_true", help="write the list and labels file, not the LMDB")
    add_common_arguments(p)


def run(args):
    base = os.path.normpath(args.db)
    list_path = args.list or base + "_list.txt"
    labels_path = args.labels or base + "_labels.txt"
    given = read_names(labels_path) if args.labels and os.path.exists(args.labels) else None
    entries, classes = folder_entries(args.root, given)
    if classes is None:
        raise VggtoolError(f"{args.root}: no class subfolders (ROOT/<class>/<image>); a folder of unlabelled "
                           "images can be given to --data directly")
    atomic_write_bytes(list_path, "".join(f"{path} {label}\n" for path, label in entries).encode("utf-8"))
    print(f"Wrote {len(entries)} images of {len(classes)} classes to {list_path}.")
    if given is None:
        atomic_write_bytes(labels_path, "".join(f"{c}\n" for c in classes).encode("utf-8"))
        print(f"Wrote the class names (index = line, from 0) to {labels_path}.")
    if args.list_only:
        return 0
    return convert([(path, label, None) for path, label in entries], args, list_path)
