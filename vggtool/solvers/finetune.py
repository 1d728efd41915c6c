"""Fine-tuning: a .caffemodel's layers copied by name into a solver's nets before training (Caffe's
`caffe train --weights`), logged as Caffe logs it. Used by `vggtool train` and the reproduction's cells."""
from ..io import prototxt
from ..errors import VggtoolError


def copy_weights(solver, path, only, log):
    """Copy the layers of the .caffemodel `path` (all, or those named in `only`) into `solver`'s train
    net and its test nets, logging what was copied and what keeps its initialisation."""
    log.info("solver.cpp:72", f"Finetuning from {path}")
    source = prototxt.read_net_param(path, is_text=False)
    if only is not None:
        names = {layer.name for layer in source.layer if len(layer.blobs)}
        absent = [n for n in only if n not in names]
        if absent:
            raise VggtoolError(f"{path}: has no parameter layer(s) named {', '.join(absent)} (asked for by "
                               f"--weights-layers / --init-from-a)")
    report = solver.net.copy_from(source, only=only)
    for line in report.lines():
        log.info("net.cpp:1137", line)
    kept = [name for name, layer in solver.net.layer_dict.items() if layer.blobs and name not in report.copied]
    if kept:
        log.info("net.cpp:1137", f"Not copied (keep their initialisation): {', '.join(kept)}")
    for net in solver.test_nets:  # layers only the test nets have (shared ones already hold the values)
        net.copy_from(source, only=only)
