"""Every vggtool setting in one object, `Settings`; environment variables are only its defaults.

When each value is decided:
- The environment (`VGGTOOL_*`, table in README "The engine") is read ONCE, by the first call of
  `defaults()`: the CLI calls it at start-up (so a bad value fails before any work), a library user's
  first `Net` does. Changing `os.environ` afterwards has no effect.
- A command overrides the defaults with `vggtool --set KEY=VALUE ... COMMAND` (`set_defaults`); code
  does the same with `with config.override(conv_algorithm="im2col"): ...`.
- A Net takes `Net(..., settings=Settings(...))` or the process defaults at construction, in
  `net.settings`. Its layers read the net-scoped fields from there; process-scoped fields (one thread
  pool, one BLAS, one C extension per process) are read from `defaults()` at each call.
A bad value raises one VggtoolError naming the variable (or `--set` key) and the accepted values.
"""
import dataclasses
import os
from contextlib import contextmanager

from .errors import VggtoolError

# The convolution algorithms (vggtool/layers/conv/); 'winograd' is the older spelling of 'winograd2'.
CONV_ALGORITHMS = ("auto", "im2col", "shifted", "winograd2", "winograd4")
CONV_ALGORITHM_ALIASES = {"winograd": "winograd2"}

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def conv_algorithm_name(value, where):
    """The canonical name of a convolution algorithm (aliases resolved), or a VggtoolError naming `where`."""
    name = CONV_ALGORITHM_ALIASES.get(value, value)
    if name not in CONV_ALGORITHMS:
        raise VggtoolError(f"{where}: unknown convolution algorithm '{value}'; use one of "
                           f"{', '.join(CONV_ALGORITHMS)} ('winograd' means winograd2)")
    return name


SHARE_MEMORY_MODES = ("auto", "on", "off")


def share_memory_mode(value, where):
    """'auto', 'on' or 'off' (a boolean's spellings mean on / off), or a VggtoolError naming `where`."""
    text = str(value).strip().lower()
    if text in SHARE_MEMORY_MODES:
        return text
    if text in _TRUE or (text in _FALSE and text):
        return "on" if text in _TRUE else "off"
    raise VggtoolError(f"{where}={value!r}: use one of {', '.join(SHARE_MEMORY_MODES)}")


def _boolean(value, where):
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise VggtoolError(f"{where}={value!r} is not a boolean (use 1/0, true/false, yes/no)")


def _count(value, where, minimum):
    try:
        number = int(str(value).strip())
    except ValueError:
        raise VggtoolError(f"{where}={value!r} is not an integer") from None
    if number < minimum:
        raise VggtoolError(f"{where}={value!r} must be at least {minimum}")
    return number


def _cpus():
    return os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class Settings:
    """The engine's settings (see the module docstring for who reads what, and when)."""

    conv_algorithm: str = "auto"  # net: convolution code for layers whose prototxt names none
    conv_cache_mb: int = 4096  # net: MB of forward columns/tiles a TRAIN net keeps for the weight gradient
    data_threads: int = dataclasses.field(default_factory=lambda: min(4, _cpus()))  # net: decode threads per data layer
    num_threads: int = dataclasses.field(default_factory=lambda: min(_cpus(), 8))  # process: slices of memory-bound passes
    c_kernels: bool = True  # process: use the C kernels (Winograd transforms, 2x2 max pooling) where built
    cuda_kernels: bool = True  # process: use the named CUDA kernels (pooling, output pass, im2col) on a GPU
    cblas: bool = True  # process: call OpenBLAS's cblas_?gemm directly for in-place accumulation
    share_memory: str = "auto"  # net: pool diffs, caches and workspace (auto: Solver and `time` nets; on; off)
    release_data: bool = True  # net: a net sharing its memory pools intermediate blob data too
    fuse_relu: bool = True  # net: a convolution followed by an in-place ReLU applies it in its output pass

    def __post_init__(self):
        # values given in code are checked as strictly as those from the environment
        set_ = object.__setattr__
        set_(self, "conv_algorithm", conv_algorithm_name(self.conv_algorithm, "conv_algorithm"))
        for name, minimum in (("conv_cache_mb", 0), ("data_threads", 1), ("num_threads", 1)):
            set_(self, name, _count(getattr(self, name), name, minimum))
        set_(self, "share_memory", share_memory_mode(self.share_memory, "share_memory"))
        for name in ("c_kernels", "cuda_kernels", "cblas", "release_data", "fuse_relu"):
            value = getattr(self, name)
            set_(self, name, value if isinstance(value, bool) else _boolean(value, name))

    @property
    def conv_cache_bytes(self):
        return self.conv_cache_mb << 20

    def replace(self, **changes):
        """A copy with `changes` (validated); unknown keys raise VggtoolError."""
        unknown = sorted(set(changes) - set(KEYS))
        if unknown:
            raise VggtoolError(f"unknown setting {unknown[0]!r}; settings are {', '.join(KEYS)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_environ(cls, environ=None):
        """Settings from `environ` (default os.environ): each VGGTOOL_* variable that is set, else the default."""
        environ = os.environ if environ is None else environ
        values = {}
        for key, (var, parse) in _ENVIRONMENT.items():
            if environ.get(var) is not None:
                values[key] = parse(environ[var], var)
        return cls(**values)


# key -> (environment variable, parser(text, variable name)). VGGTOOL_NO_* are negated: 1 turns it off.
_ENVIRONMENT = {
    "conv_algorithm": ("VGGTOOL_CONV_ALGO", lambda v, var: conv_algorithm_name(v.strip() or "auto", var)),
    "conv_cache_mb": ("VGGTOOL_CONV_CACHE_MB", lambda v, var: _count(v, var, 0)),
    "data_threads": ("VGGTOOL_DATA_THREADS", lambda v, var: _count(v, var, 1)),
    "num_threads": ("VGGTOOL_NUM_THREADS", lambda v, var: _count(v, var, 1)),
    "c_kernels": ("VGGTOOL_NO_CKERNELS", lambda v, var: not _boolean(v, var)),
    "cuda_kernels": ("VGGTOOL_NO_CUDA_KERNELS", lambda v, var: not _boolean(v, var)),
    "cblas": ("VGGTOOL_NO_CBLAS", lambda v, var: not _boolean(v, var)),
    "share_memory": ("VGGTOOL_SHARE_MEMORY", lambda v, var: share_memory_mode(v.strip() or "auto", var)),
    "release_data": ("VGGTOOL_RELEASE_DATA", _boolean),
    "fuse_relu": ("VGGTOOL_FUSE_RELU", _boolean),
}
KEYS = tuple(f.name for f in dataclasses.fields(Settings))

_defaults = None  # the process defaults, decided at the first defaults() call


def defaults():
    """The process-wide settings: the environment's, read at the first call, unless set_defaults replaced them."""
    global _defaults
    if _defaults is None:
        _defaults = Settings.from_environ()
    return _defaults


def set_defaults(settings):
    """Replace the process-wide settings (the CLI's --set); returns the previous ones."""
    global _defaults
    previous = defaults()
    _defaults = settings
    return previous


@contextmanager
def override(**changes):
    """Within the block, the process defaults with `changes` (Nets built inside take them too)."""
    previous = set_defaults(defaults().replace(**changes))
    try:
        yield _defaults
    finally:
        set_defaults(previous)


def parse_assignments(assignments, where="--set"):
    """{key: text} from ["key=value", ...] (the CLI's --set); Settings validates the values."""
    changes = {}
    for item in assignments:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise VggtoolError(f"{where} {item!r}: expected KEY=VALUE (keys: {', '.join(KEYS)})")
        if key not in KEYS:
            raise VggtoolError(f"{where} {item!r}: unknown setting {key!r}; settings are {', '.join(KEYS)}")
        changes[key] = value
    return changes


def apply_process_defaults():
    """Environment for the native libraries, set by the CLI entry points; call it before importing NumPy.

    - OPENBLAS_THREAD_TIMEOUT=4: OpenBLAS's idle threads otherwise spin ~2^28 cycles after each GEMM and
      steal the cores from the threaded element-wise passes that follow; 2^4 cycles lets them sleep at
      once (waking costs microseconds per GEMM). OpenBLAS reads it when it loads.
    - OPENCV_LOG_LEVEL=ERROR: vggtool reports unreadable images itself, naming the list line; OpenCV's
      own warnings about the same files would only clutter the output.
    Values already in the environment are kept.
    """
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    import sys

    if "cv2" in sys.modules:  # pragma: no cover - depends on import order: OpenCV has read it already
        try:
            import cv2.utils.logging as cv_logging

            cv_logging.setLogLevel(cv_logging.LOG_LEVEL_ERROR)
        except Exception:
            pass
