"""A request's text turned into Bark-sized segments, in the caller's thread, never on the engine's.

Segmenting and tokenising cost time in proportion to the text a client sends; the
engine thread only runs models and bookkeeping, so this happens where the text
arrives: in `Engine.submit` for a whole text, in `StreamHandle.feed/flush/end` for
piecewise text (the server calls those from a worker thread, off its event loop).
The engine receives ready `PreparedSegment`s.

Piecewise rule: text accumulates in a buffer; every complete sentence (a sentence
followed by the start of another) is segmented as soon as it exists; `flush` and
`end` segment whatever is buffered, even mid-sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TextError
from .text import normalize_whitespace, segment_text, split_sentences


def check_text(text: str) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate, which Python strings can hold and JSON can
    carry as \\ud800): the tokenizer cannot encode it, so it is the caller's error, not the engine's."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TextError(f"text: character {exc.start} is a lone surrogate (U+{ord(text[exc.start]):04X}), not "
                        "valid Unicode; send UTF-8 text") from None


@dataclass(frozen=True)
class PreparedSegment:
    text: str  # exact slice of the normalised request text
    token_ids: list[int]  # the tokenizer's ids for `text`


class TextPrep:
    """One request's text buffer and segmenter (not thread-safe: the handle serialises calls)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.buffer = ""
        self.segments_made = 0  # the first segment of a request may be cut short for a fast first audio

    def whole(self, text: str) -> list[PreparedSegment]:
        check_text(text)
        return self._segment(text)

    def feed(self, text: str) -> list[PreparedSegment]:
        """Add text; returns the segments of the sentences it completed."""
        check_text(text)
        self.buffer += text
        sentences = split_sentences(self.buffer)
        if len(sentences) <= 1:
            return []
        trailing = " " if self.buffer[-1:].isspace() else ""  # "How " + "are" != "Howare"
        self.buffer = sentences[-1] + trailing
        return self._segment(" ".join(sentences[:-1]))

    def flush(self) -> list[PreparedSegment]:
        """Segment everything buffered now."""
        text, self.buffer = self.buffer, ""
        return self._segment(text) if normalize_whitespace(text) else []

    def _segment(self, text: str) -> list[PreparedSegment]:
        pieces = segment_text(text, self.tokenizer.count, first_clause=self.segments_made == 0)
        self.segments_made += len(pieces)
        return [PreparedSegment(piece, self.tokenizer.encode(piece)) for piece in pieces]
