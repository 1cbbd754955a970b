"""The exceptions callers of the engine can meet, one class per kind of mistake.

Every message names the field or file involved and what would fix it.
"""

from __future__ import annotations


class BarkStreamError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(BarkStreamError, ValueError):
    """An option has a value outside its valid range or set."""


class TextError(BarkStreamError, ValueError):
    """The text to speak is empty or otherwise unusable."""


class VoiceError(BarkStreamError, ValueError):
    """A voice preset name, file or array is unknown or malformed."""


class WeightsError(BarkStreamError):
    """Model weights could not be found, downloaded or read."""
