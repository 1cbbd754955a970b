"""Shared test setup: make encodec/transformers importable whatever torchaudio does."""

from __future__ import annotations

from streaming.encodec_compat import ensure_torchaudio

ensure_torchaudio()
