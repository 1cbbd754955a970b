"""Per-request options: how to sample, and how eagerly to stream.

Both are frozen dataclasses validated at construction; a bad value raises
`ConfigError` naming the field and the valid range.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


def _check_range(name: str, value: float | None, lo: float, hi: float, *, allow_none: bool,
                 above: bool = False) -> None:
    """lo <= value <= hi (lo < value with `above`); ConfigError naming `name` otherwise."""
    if value is None:
        if not allow_none:
            raise ConfigError(f"{name}: a number is required", field=name)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: expected a number, got {type(value).__name__}", field=name)
    if above and not lo < value <= hi:
        raise ConfigError(f"{name}: {value!r} is outside ({lo}, {hi}]", field=name)
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: {value!r} is outside [{lo}, {hi}]", field=name)


def _check_int(name: str, value: int | None, lo: int, hi: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer, got {type(value).__name__}", field=name)
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: {value!r} is outside [{lo}, {hi}]", field=name)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling options; defaults are Suno's `generate_audio` defaults."""

    text_temp: float = 0.7  # semantic stage temperature
    coarse_temp: float = 0.7  # coarse stage temperature (Suno's `waveform_temp`)
    fine_temp: float | None = 0.5  # fine stage temperature; None = argmax
    top_k: int | None = None  # semantic and coarse: keep the k best logits
    top_p: float | None = None  # semantic and coarse: nucleus sampling
    min_eos_p: float = 0.2  # semantic stops once P(EOS) reaches this
    seed: int | None = None  # None = a fresh random seed per request
    max_semantic_tokens: int | None = None  # cap on semantic tokens (random weights rarely emit EOS)
    greedy: bool = False  # argmax everywhere (top_k=1 semantic/coarse, fine_temp=None)

    def __post_init__(self) -> None:
        _check_range("text_temp", self.text_temp, 1e-3, 10.0, allow_none=False)
        _check_range("coarse_temp", self.coarse_temp, 1e-3, 10.0, allow_none=False)
        _check_range("fine_temp", self.fine_temp, 1e-3, 10.0, allow_none=True)
        _check_int("top_k", self.top_k, 1, 12_096)
        _check_range("top_p", self.top_p, 1e-6, 1.0, allow_none=True)
        # 0 would end every utterance before its first token (P(EOS) >= 0 always holds)
        _check_range("min_eos_p", self.min_eos_p, 0.0, 1.0, allow_none=False, above=True)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("max_semantic_tokens", self.max_semantic_tokens, 1, 768)
        if not isinstance(self.greedy, bool):
            raise ConfigError(f"greedy: expected true or false, got {type(self.greedy).__name__}", field="greedy")

    @property
    def semantic_top_k(self) -> int | None:
        return 1 if self.greedy else self.top_k

    @property
    def fine_temperature(self) -> float | None:
        return None if self.greedy else self.fine_temp


LOOKAHEAD_POLICIES = ("exact", "bounded")
FINE_POLICIES = ("sliding", "offline")


@dataclass(frozen=True)
class StreamPolicy:
    """How eagerly the coarse and fine stages start windows (latency vs fidelity)."""

    lookahead: str = "exact"  # "exact": coarse windows wait for every semantic token they read
    max_lookahead: int = 16  # "bounded": semantic tokens a window may read beyond what exists
    fine: str = "sliding"  # "sliding": fine windows over partial coarse; "offline": Bark's own windows
    fine_right_context: int = 16  # "sliding": coarse frames of right context before a frame is final
    fine_window: int = 256  # "sliding": frames per fine model call (left + new + right)

    def __post_init__(self) -> None:
        if self.lookahead not in LOOKAHEAD_POLICIES:
            raise ConfigError(f"lookahead: {self.lookahead!r} is not one of {', '.join(LOOKAHEAD_POLICIES)}",
                              field="lookahead")
        if self.fine not in FINE_POLICIES:
            raise ConfigError(f"fine: {self.fine!r} is not one of {', '.join(FINE_POLICIES)}", field="fine")
        _check_int("max_lookahead", self.max_lookahead, 0, 256)
        _check_int("fine_right_context", self.fine_right_context, 0, 512)
        _check_int("fine_window", self.fine_window, 32, 1024)
        if self.fine_window <= 2 * self.fine_right_context:
            raise ConfigError(
                f"fine_window: {self.fine_window} must exceed 2 * fine_right_context ({self.fine_right_context})",
                field="fine_window")
