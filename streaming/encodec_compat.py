"""Make `import encodec` (and transformers' audio helpers) work when torchaudio cannot load.

The PyPI `encodec` 0.1.1 imports `torchaudio` at package import, but only uses it
for file I/O and resampling helpers that this project never calls. On machines
where torchaudio is a build for another torch (e.g. the registry's CUDA wheel
next to a CPU torch), that import raises `OSError`/`ImportError` and takes
`encodec` down with it.

`ensure_torchaudio()` tries the real torchaudio first. Only if it fails to load
do we register a small placeholder module under the name `torchaudio`; touching
any of its attributes raises an error that says why. Machines where torchaudio
works keep the real one.
"""

from __future__ import annotations

import importlib.machinery
import logging
import sys
import types

logger = logging.getLogger(__name__)

_PLACEHOLDER_FLAG = "__bark_stream_placeholder__"


class _TorchaudioPlaceholder(types.ModuleType):
    """Stands in for a torchaudio that failed to load; any attribute use says why."""

    def __init__(self, reason: str) -> None:
        super().__init__("torchaudio")
        self.__spec__ = importlib.machinery.ModuleSpec("torchaudio", loader=None)
        self.__version__ = "0.0.0+unavailable"
        self._reason = reason
        setattr(self, _PLACEHOLDER_FLAG, True)

    def __getattr__(self, name: str):  # only called for missing attributes
        raise AttributeError(
            f"torchaudio.{name} is unavailable: torchaudio failed to load ({self._reason}). "
            "bark-stream does not need it; install a torchaudio build matching your torch "
            "if you need its file I/O."
        )


def torchaudio_is_placeholder() -> bool:
    """True when `torchaudio` in sys.modules is our placeholder."""
    mod = sys.modules.get("torchaudio")
    return bool(mod is not None and getattr(mod, "__dict__", {}).get(_PLACEHOLDER_FLAG))


def ensure_torchaudio() -> None:
    """Import the real torchaudio, or register the placeholder if it cannot load."""
    if "torchaudio" in sys.modules:
        return
    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError) as exc:
        for name in [n for n in sys.modules if n == "torchaudio" or n.startswith("torchaudio.")]:
            del sys.modules[name]
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        logger.debug("torchaudio unavailable, using placeholder: %s", reason)
        sys.modules["torchaudio"] = _TorchaudioPlaceholder(reason)


def import_encodec() -> types.ModuleType:
    """Return the `encodec` package, importable whatever state torchaudio is in."""
    ensure_torchaudio()
    import encodec

    return encodec
