"""Shared test setup: make encodec/transformers importable whatever torchaudio does, and keep one test's
logger levels out of the next."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from streaming.encodec_compat import ensure_torchaudio

ensure_torchaudio()


@pytest.fixture(autouse=True)
def _logger_levels_restored() -> Iterator[None]:
    """server's main() quiets the websockets logger process-wide (as the CLI should); a test that calls it in
    process must not hide the debug lines a later test reads (the order of tests must not matter)."""
    loggers = [logging.getLogger(name) for name in ("websockets", "server", "streaming")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)
