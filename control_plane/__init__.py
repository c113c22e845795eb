"""refsys control plane: the service kernel (``core``) and its composition (``app``, ``cli``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("refsys")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
