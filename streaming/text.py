"""Text preparation: whitespace normalisation, sentence splitting and segmentation into Bark-sized pieces."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from .constants import MAX_TEXT_TOKENS
from .errors import ConfigError, TextError

logger = logging.getLogger(__name__)

Span = tuple[int, int]  # [start, end) in the normalised text

# Speech-duration estimate (rough, for segment limits; Bark speaks ~2.5-3 words/s):
# seconds = max(words / 2.75, letters_and_digits / 15) + cjk_chars / 4.5
# where "words" are space-separated runs holding a non-CJK letter/digit, a Bark tag counts as a word,
# long words and digit strings are covered by the per-character rate, and each CJK ideograph or kana
# counts as one syllable at 4.5 per second.
WORDS_PER_SECOND = 2.75
CHARS_PER_SECOND = 15.0
CJK_CHARS_PER_SECOND = 4.5

_WESTERN_ENDS = ".!?…।"  # need a following space (or the end) to end a sentence
_CJK_ENDS = "。！？"  # end a sentence with or without a following space
_END_RUN = re.compile(f"[{re.escape(_WESTERN_ENDS + _CJK_ENDS)}]+")
_CLOSERS = re.compile(r"[\"'”’»)\]}）」』】〕〉》]*")
_OPENERS = "\"'“‘«([{（「『【〔〈《¿¡"
_TAG = re.compile(r"\[[^\[\]]{1,40}\]")  # Bark tags: [laughs], [music], [clears throat], ...
_TAGS_AFTER = re.compile(r"(?: ?\[[^\[\]]{1,40}\])+")
_CLAUSE_CUT = re.compile(r"[,;:](?= )|[，、；：]|[—–]")
_CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")

# A period after these never ends a sentence (a name or a noun follows).
_TITLES = frozenset("Dr Mr Mrs Ms Mx Prof St Mt Rev Fr Sr Jr Gen Col Capt Lt Sgt Hon Gov Sen Rep Pres Hr".split())
_NEVER_FINAL = frozenset(["vs", "e.g", "i.e", "cf", "viz", "approx", "ca"])
# A period after these does not end a sentence when a number follows ("No. 5", "Jan. 5th", "ext. 12").
_BEFORE_NUMBER = frozenset("No Nos Nr Vol Fig Ch Art Sec Op p pp ext Ext tel Tel Jan Feb Mar Apr Jun Jul Aug Sep "
                           "Sept Oct Nov Dec".split())
_INTRO_TAGS = frozenset(["[music]"])  # tags that introduce what follows (lyrics): they start the next sentence
_LOOKAHEAD = 120  # characters read past a terminator to find the next word (tags skipped)
_INITIALISM = re.compile(r"(?:[A-Z]\.)+[A-Z]")  # U.S, U.K, U.S.A (the final period is the terminator)


def normalize_whitespace(text: str) -> str:
    """Collapse each whitespace run to one space and strip the ends (Suno's `_normalize_whitespace`)."""
    return re.sub(r"\s+", " ", text).strip()


def split_sentences(text: str) -> list[str]:
    """Split normalised text into sentences; never returns empty pieces.

    Invariant: with t = normalize_whitespace(text), every piece is a slice of t and consecutive
    pieces are separated in t by exactly one space, except after a piece ending in a CJK terminator
    (。！？, then optional closing quotes/brackets/tags) where the separator is "" when t had no space.
    So for text without CJK terminators `" ".join(split_sentences(x)) == normalize_whitespace(x)`.
    """
    normalized = normalize_whitespace(text)
    return [normalized[start:end] for start, end in _sentence_spans(normalized)]


def _sentence_spans(text: str) -> list[Span]:
    """Sentence spans of normalised text, with tag-only or punctuation-only pieces merged into a neighbour."""
    if not text:
        return []
    spans: list[Span] = []
    start = 0
    for match in _END_RUN.finditer(text):
        if match.start() < start:
            continue
        end = _boundary_after(text, match)
        if end is not None:
            spans.append((start, end))
            start = end + 1 if end < len(text) and text[end] == " " else end
    spans.append((start, len(text)))
    return _merge_bare(text, [span for span in spans if span[0] < span[1]])


def _boundary_after(text: str, match: re.Match[str]) -> int | None:
    """Where the sentence ending with `match` stops (after closers and trailing tags), or None."""
    run = match.group()
    closed = _CLOSERS.match(text, match.end()).end()
    tagged = _TAGS_AFTER.match(text, closed)
    if tagged:  # reaction tags ([laughs]) stay with the sentence before; an intro tag and all after it do not
        intro = next((m.start() for m in _TAG.finditer(text, closed, tagged.end()) if m.group().lower() in _INTRO_TAGS),
                     None)
        if intro is not None:
            tagged = _TAGS_AFTER.match(text, closed, intro) if intro > closed + 1 else None
    candidates = [tagged.end(), closed] if tagged else [closed]
    cjk = run[-1] in _CJK_ENDS  # "。." ends like ".": only a run ending in a CJK terminator needs no space
    for end in candidates:
        if end >= len(text):
            return None  # the rest (closers, tags) belongs to this last sentence
        if cjk:
            return end
        if text[end] == " ":
            return None if _keeps_together(text, match.start(), run, end) else end
    return None


def _keeps_together(text: str, run_start: int, run: str, space: int) -> bool:
    """True when a western terminator followed by a space does not end the sentence."""
    following = _TAG.sub("", text[space + 1 : space + 1 + _LOOKAHEAD]).lstrip(" ").split(" ", 1)[0]
    if not following:
        return False
    if following[0] in _WESTERN_ENDS:
        return True  # spaced dots ". . ."
    first = next((char for char in following if char.isalnum()), following[0])
    if first.islower():
        return True  # "... and then", "etc. and", "a.m. daily", '"Really?" she asked'
    if run != ".":
        return False
    word = text[text.rfind(" ", 0, run_start) + 1 : run_start].lstrip(_OPENERS)
    if word in _TITLES or word.lower() in _NEVER_FINAL:
        return True
    if word in _BEFORE_NUMBER and first.isdigit():
        return True
    if word == "al" and text[max(0, run_start - 6):run_start].lower().endswith("et al") and (
            first.isdigit() or following[0] in "(["):
        return True  # "Smith et al. (2019)", "et al. 2019"
    if len(word) == 1 and word.isupper() and word != "I":
        return True  # an initial: "J. R. R. Tolkien"
    return bool(_INITIALISM.fullmatch(word))


def _is_bare(piece: str) -> bool:
    """A piece with no letter or digit outside Bark tags (a lone tag, '...', '♪')."""
    return not any(char.isalnum() for char in _TAG.sub("", piece))


def _merge_bare(text: str, spans: list[Span]) -> list[Span]:
    """Merge each bare span into the previous one (the first into the next)."""
    merged: list[Span] = []
    for span in spans:
        if merged and (_is_bare(text[span[0] : span[1]]) or _is_bare(text[merged[-1][0] : merged[-1][1]])):
            merged[-1] = (merged[-1][0], span[1])
        else:
            merged.append(span)
    return merged


def estimate_seconds(text: str) -> float:
    """Rough spoken duration of `text` in seconds (see the formula above)."""
    cjk = len(_CJK_CHAR.findall(text))
    rest = _CJK_CHAR.sub(" ", text)
    words = sum(1 for word in rest.split() if any(char.isalnum() for char in word))
    chars = sum(1 for char in rest if char.isalnum())
    return max(words / WORDS_PER_SECOND, chars / CHARS_PER_SECOND) + cjk / CJK_CHARS_PER_SECOND


def _cut(text: str, span: Span, positions: list[int]) -> list[Span]:
    """Cut a span after each position, dropping the single space at each cut."""
    start, end = span
    pieces: list[Span] = []
    for position in positions:
        if start < position < end:
            pieces.append((start, position))
            start = position + 1 if text[position] == " " else position
    pieces.append((start, end))
    return [(s, e) for s, e in pieces if s < e]


def _clause_positions(text: str, span: Span) -> list[int]:
    """Cut points after , ; : (before a space), CJK ，、；：, and dashes — –."""
    return [match.end() for match in _CLAUSE_CUT.finditer(text, span[0], span[1])]


def _clause_spans(text: str, span: Span) -> list[Span]:
    return _cut(text, span, _clause_positions(text, span))


def _word_spans(text: str, span: Span) -> list[Span]:
    return _cut(text, span, [i for i in range(span[0], span[1]) if text[i] == " "])


def _hard_split(text: str, span: Span, fits: Callable[[str], bool]) -> list[Span]:
    """Split a span that has no usable boundary into the longest fitting character prefixes.

    Each prefix is found by galloping (try 16, 32, 64, ... characters until one does not
    fit) and then bisecting between the last fit and the first miss, so each `fits` call
    reads at most about twice the piece it finds: linear in the span overall, however long
    the span is (a bisection over the whole remaining span was quadratic).
    """
    pieces: list[Span] = []
    start, end = span
    while start < end:
        good, step = start + 1, 16  # one character always goes
        bad = end + 1
        while good < end:
            probe = min(end, start + step)
            if fits(text[start:probe]):
                good = probe
                step *= 2
            else:
                bad = probe
                break
        low, high = good, min(bad - 1, end)  # the longest fitting prefix ends in [low, high]
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits(text[start:middle]) else (low, middle - 1)
        pieces.append((start, low))
        start = low
    return pieces


def _quoted_positions(text: str, span: Span) -> list[bool]:
    """For each position of the span: inside a double quotation ("…", “…”, «…»)?"""
    inside, depth_straight, depth_curly = [], False, 0
    for char in text[span[0]:span[1]]:
        inside.append(depth_straight or depth_curly > 0)
        if char == '"':
            depth_straight = not depth_straight
        elif char in "“«":
            depth_curly += 1
        elif char in "”»":
            depth_curly = max(0, depth_curly - 1)
    return inside


def _fitting_units(text: str, span: Span, fits: Callable[[str], bool]) -> list[Span]:
    """Break a span into pieces that fit: whole, else clauses (cut outside quotations when those cuts
    suffice), else words, else characters."""
    if fits(text[span[0] : span[1]]):
        return [span]
    quoted = _quoted_positions(text, span)
    outside = [p for p in _clause_positions(text, span) if not quoted[p - span[0] - 1]]
    if outside:
        clauses = _cut(text, span, outside)
        if all(fits(text[a:b]) for a, b in clauses):
            return clauses
    units: list[Span] = []
    for clause in _clause_spans(text, span):
        if fits(text[clause[0] : clause[1]]):
            units.append(clause)
            continue
        run: list[Span] = []  # consecutive words that fit on their own
        for word in _word_spans(text, clause):
            if fits(text[word[0] : word[1]]):
                run.append(word)
                continue
            units.extend(_balanced(text, run, fits) + _hard_split(text, word, fits))
            run = []
        units.extend(_balanced(text, run, fits))
    return units


def _balanced(text: str, words: list[Span], fits: Callable[[str], bool]) -> list[Span]:
    """Join words into chunks that all fit: as many as greedy packing needs, of near-equal word count.

    Greedy packing alone leaves a short tail ("... than the" / "last."); if no even split with the
    greedy count (or one more) fits, the greedy chunks are used.
    """
    greedy = _group(text, words, fits, fits)
    if len(greedy) <= 1:
        return greedy
    for count in (len(greedy), len(greedy) + 1):
        size = -(-len(words) // count)  # ceil
        chunks = [(words[i][0], words[min(i + size, len(words)) - 1][1]) for i in range(0, len(words), size)]
        if all(fits(text[start:end]) for start, end in chunks):
            return chunks
    return greedy


def _group(text: str, units: list[Span], fits: Callable[[str], bool], first_fits: Callable[[str], bool]) -> list[Span]:
    """Greedily join consecutive units while the joined text fits (`first_fits` for the first segment)."""
    segments: list[Span] = []
    current: Span | None = None
    for unit in units:
        if current is None:
            current = unit
            continue
        joined = (current[0], unit[1])
        check = first_fits if not segments else fits
        if check(text[joined[0] : joined[1]]):
            current = joined
        else:
            segments.append(current)
            current = unit
    if current is not None:
        segments.append(current)
    return segments


def segment_text(
    text: str,
    count_tokens: Callable[[str], int],
    *,
    max_tokens: int = MAX_TEXT_TOKENS,
    max_seconds: float = 13.0,
    first_clause: bool = True,
    first_max_tokens: int = 24,
) -> list[str]:
    """Group sentences into segments of at most `max_tokens` tokens and about `max_seconds` of speech.

    A sentence over a limit is split at clause marks (, ; : — –), then at spaces, then between
    characters. With `first_clause`, the first segment holds at most `first_max_tokens` tokens where
    a sentence or clause boundary allows it (a long first sentence is cut after its first clauses),
    so the first audio comes out sooner. Segments are exact slices of the normalised text.
    """
    _check_limits(max_tokens, max_seconds, first_max_tokens)
    normalized = normalize_whitespace(text)
    if not normalized:
        raise TextError("text: is empty")

    def fits(piece: str) -> bool:
        return count_tokens(piece) <= max_tokens and estimate_seconds(piece) <= max_seconds

    def first_fits(piece: str) -> bool:
        return fits(piece) and (not first_clause or count_tokens(piece) <= first_max_tokens)

    sentences = _sentence_spans(normalized)
    units: list[Span] = []
    for index, sentence in enumerate(sentences):
        piece = normalized[sentence[0] : sentence[1]]
        if index == 0 and first_clause and count_tokens(piece) > first_max_tokens:
            for clause in _clause_spans(normalized, sentence):
                units.extend(_fitting_units(normalized, clause, fits))
        else:
            units.extend(_fitting_units(normalized, sentence, fits))
    segments = [normalized[start:end] for start, end in _group(normalized, units, fits, first_fits)]
    logger.debug("segmented %d chars into %d segments", len(normalized), len(segments))
    return segments


def _check_limits(max_tokens: int, max_seconds: float, first_max_tokens: int) -> None:
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TEXT_TOKENS:
        raise ConfigError(f"max_tokens: {max_tokens!r} is not an integer in [1, {MAX_TEXT_TOKENS}]")
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not max_seconds > 0:
        raise ConfigError(f"max_seconds: {max_seconds!r} is not a positive number")
    if isinstance(first_max_tokens, bool) or not isinstance(first_max_tokens, int) or first_max_tokens < 1:
        raise ConfigError(f"first_max_tokens: {first_max_tokens!r} is not a positive integer")
