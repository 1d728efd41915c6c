"""Net weights as HDF5, in Caffe's layout (Net::ToHDF5 / CopyTrainedLayersFromHDF5): group `data` (and
`diff` with write_diff) holding one group per layer, in layer order, with datasets "0", "1", ... per
parameter. A shared parameter is stored once, by its owner (its data; diffs are stored everywhere).

h5py is the optional extra `vggtool[hdf5]`."""
import os

import numpy as np

from ..atomic_files import atomic_write_with
from ..backend import to_numpy
from ..errors import VggtoolError


def _h5py():
    try:
        import h5py
    except ImportError:
        raise VggtoolError("HDF5 weights need h5py: pip install 'vggtool[hdf5]'") from None
    return h5py


def save(net, filename, write_diff=False):
    h5py = _h5py()
    filename = str(filename)

    def fill(_fd, tmp):
        with h5py.File(tmp, "w", track_order=True) as f:
            data = f.create_group("data", track_order=True)
            diff = f.create_group("diff", track_order=True) if write_diff else None
            for name, layer in zip(net.layer_names, net.layers):
                g = data.create_group(name)
                gd = diff.create_group(name) if write_diff else None
                for j, blob in enumerate(layer.blobs):
                    if not _shared(net, name, j):
                        g.create_dataset(str(j), data=to_numpy(blob.data).astype(np.float32))
                    if write_diff:
                        gd.create_dataset(str(j), data=to_numpy(blob.diff).astype(np.float32))

    atomic_write_with(filename, fill)  # the umask's mode and a temporary name later runs recognise


def _shared(net, layer_name, j):
    """True when parameter j of the layer is a shared one that another layer owns."""
    spec = net.layer_dict[layer_name].param
    if j < len(spec.param) and spec.param[j].name:
        owner = net.param_owner(spec.param[j].name)
        return owner is not None and owner != (layer_name, j)
    return False


def load(net, filename):
    h5py = _h5py()
    filename = str(filename)
    if not os.path.isfile(filename):
        raise VggtoolError(f"Could not open file {filename}")
    try:
        f = h5py.File(filename, "r")
    except OSError as e:
        raise VggtoolError(f"{filename}: not an HDF5 file ({e})") from None
    with f:
        if "data" not in f:
            raise VggtoolError(f"Error reading weights from {filename}: no 'data' group")
        for name, group in f["data"].items():
            layer = net.layer_dict.get(name)
            if layer is None:
                continue  # Caffe: "Ignoring source layer"
            if len(group) > len(layer.blobs):
                raise VggtoolError(f"{filename}: Incompatible number of blobs for layer {name} "
                                   f"({len(group)} in the file, {len(layer.blobs)} in the net)")
            for j, blob in enumerate(layer.blobs):
                key = str(j)
                if key not in group:
                    if _shared(net, name, j):
                        continue  # stored by its owner
                    raise VggtoolError(f"{filename}: Incompatible number of blobs for layer {name} "
                                       f"(parameter {j} missing)")
                values = np.asarray(group[key], dtype=np.float32)
                if tuple(values.shape) != blob.shape:
                    raise VggtoolError(f"{filename}: layer {name} param {j} has shape {values.shape} in the file "
                                       f"but {blob.shape} in the net")
                blob.data = values
