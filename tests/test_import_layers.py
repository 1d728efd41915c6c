"""The package's import directions: every module of vggtool/ has a level, and no import (at the top of a
module or inside a function) reaches a higher level. The levels, lowest first:

0 base       leaf utilities every layer may use: errors, settings, the array backend, fillers, the top-k
             rule (the Accuracy layer uses it), atomic files, progress bars
1 io/data    Caffe's file formats (prototxt, upgrade, wire codec, blobs), the dataset readers, box geometry
2 engine     layers, Net, solvers, multi-device training, the gradient checker
3 protocols  the paper's protocols (vgg/) and the model converters (interop/)
4 front ends the CLI and pycaffe

Modules of one level may import each other. The data layer (layers/data.py) reads records through
vggtool.data, and the readers build on the formats, so io/data lie under the engine, not above it.
"""
import ast
from pathlib import Path

import vggtool

BASE, IO_DATA, ENGINE, PROTOCOLS, FRONT_ENDS = range(5)
LEVEL_NAMES = ("base", "io/data", "engine", "protocols", "front ends")

# Dotted names under vggtool; a package's entry covers everything inside it. The longest match wins.
LEVELS = {
    "errors": BASE, "config": BASE, "backend": BASE, "fillers": BASE, "ranking": BASE,
    "atomic_files": BASE, "progress": BASE, "listargs": BASE, "proto": BASE,
    "io": IO_DATA, "blob": IO_DATA, "data": IO_DATA,
    "": ENGINE,  # vggtool/__init__.py: Net, get_solver, the devices
    "layers": ENGINE, "net": ENGINE, "solvers": ENGINE, "testing": ENGINE,
    "vgg": PROTOCOLS, "interop": PROTOCOLS,
    "cli": FRONT_ENDS, "pycaffe": FRONT_ENDS, "__main__": FRONT_ENDS,
}

PACKAGE_DIR = Path(vggtool.__file__).resolve().parent


def level_of(dotted):
    """The level of a module or name under vggtool ("layers.conv", "vgg.evaluate.rescale"), or None."""
    if not dotted:
        return LEVELS[""]
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):  # "" covers vggtool/__init__.py alone, not every module
        key = ".".join(parts[:n])
        if key in LEVELS:
            return LEVELS[key]
    return None


def is_module(dotted):
    path = PACKAGE_DIR.joinpath(*dotted.split(".")) if dotted else PACKAGE_DIR
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def module_name(path):
    parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source, name, is_package=False, filename="<source>"):
    """(line, dotted name under vggtool) for every import of a vggtool module in `source`, the text of
    the module vggtool.`name` (a package's __init__ when `is_package`)."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb from vggtool.<package>
                base = ["vggtool"] + (package.split(".") if package else [])
                if node.level - 1 > len(base) - 1:
                    raise AssertionError(f"{filename}:{node.lineno}: relative import above vggtool")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            # `from pkg import sub` may name a submodule: then the submodule is imported, else pkg
            targets = [f"{module}.{alias.name}" if is_module(f"{module}.{alias.name}"[len("vggtool."):])
                       else module for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "vggtool" or target.startswith("vggtool."):
                yield node.lineno, target[len("vggtool."):] if target != "vggtool" else ""


def all_modules():
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_level():
    missing = [module_name(p) for p in all_modules() if level_of(module_name(p)) is None]
    assert not missing, f"give these modules a level in LEVELS: {missing}"


def test_no_import_reaches_a_higher_level():
    upward = []
    for path in all_modules():
        here = level_of(module_name(path))
        for line, target in imported_names(path.read_text(), module_name(path), path.name == "__init__.py",
                                           str(path)):
            there = level_of(target)
            if there is not None and there > here:
                upward.append(f"{path.relative_to(PACKAGE_DIR.parent)}:{line} ({LEVEL_NAMES[here]}) imports "
                              f"vggtool.{target} ({LEVEL_NAMES[there]})")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_the_checker_sees_upward_imports():
    """The checker resolves relative imports, function-level imports and `from pkg import submodule`."""
    assert level_of("vgg.evaluate.rescale") == PROTOCOLS and level_of("layers.conv.policy") == ENGINE
    assert level_of("") == ENGINE and level_of("nonexistent") is None and level_of("Net") is None
    source = ("from ..vgg import evaluate\n"
              "def f():\n    from .. import cli\n"
              "from ..errors import VggtoolError\n"
              "import vggtool.interop.onnx\n"
              "from . import base\n")
    found = sorted(imported_names(source, "layers.x"))  # as if it were vggtool/layers/x.py
    assert found == [(1, "vgg.evaluate"), (3, "cli"), (4, "errors"), (5, "interop.onnx"), (6, "layers.base")]
    assert [level_of(t) for _, t in found] == [PROTOCOLS, FRONT_ENDS, BASE, PROTOCOLS, ENGINE]
    assert sorted(imported_names("from .. import evaluate\n", "vgg.reproduction.run")) == \
        [(1, "vgg.evaluate")]  # two dots from vgg/reproduction/ stay inside vgg/
    assert sorted(imported_names("from vggtool import Net\n", "cli.x")) == [(1, "")]
    assert sorted(imported_names("from .layers import base\n", "", is_package=True)) == [(1, "layers.base")]
