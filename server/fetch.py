"""`python -m server.fetch`: everything a server needs, downloaded once on a machine with network access,
for servers that have none (`--offline`).

    python -m server.fetch bark-small                  # into the standard caches (HF_HOME, TORCH_HOME)
    python -m server.fetch bark --dir /models/bark      # or into one directory, to copy anywhere

What it gets, from where the server itself would (streaming/weights.py, codec.py, tokenizer.py, voices.py):
  model      Suno's checkpoints from hub repo suno/bark: text.pt coarse.pt fine.pt (bark-small) or
             text_2.pt coarse_2.pt fine_2.pt (bark)
  codec      EnCodec 24 kHz, encodec_24khz-d7cc33bc.th from dl.fbaipublicfiles.com (hash-checked)
  tokenizer  vocab.txt of hub repo bert-base-multilingual-cased
  voices     speaker_embeddings_path.json and the .npy prompts of hub repo suno/bark-small
             (--voices v2: the 130 v2/ presets, the default; all; none; or names, comma-separated)

Afterwards it prints the matching start command: with the caches,
`python -m server --model bark-small --offline` (copy ~/.cache/huggingface and ~/.cache/torch, or the
directories HF_HOME and TORCH_HOME name, to the server); with --dir DIR,
`python -m server --model DIR/model --codec DIR/codec/encodec_24khz-d7cc33bc.th --tokenizer DIR/tokenizer
--voices DIR/voices --offline`. Without network it stops at once with one message saying what to do.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streaming.checkpoints import SUNO_FILES
from streaming.codec import CHECKPOINT_NAME, CHECKPOINT_URL
from streaming.errors import WeightsError
from streaming.tokenizer import DEFAULT_TOKENIZER_REPO, VOCAB_FILE
from streaming.voices import DEFAULT_HUB_REPO, INDEX_FILE, PROMPT_KEYS, list_presets
from streaming.weights import NAMED, SUNO_REPO, hub_reachable

CODEC_SHA256_PREFIX = CHECKPOINT_NAME.rsplit("-", 1)[1].split(".")[0]  # torch.hub's naming: name-<sha256[:8]>.th
MODELS = ("bark-small", "bark")


@dataclass(frozen=True)
class Item:
    """One file to fetch: where it comes from and, with --dir, where it goes (relative to the directory)."""

    kind: str  # model | codec | tokenizer | voices
    repo: str | None  # hub repo, None for the codec URL
    filename: str  # file in the repo, or the codec's URL
    target: str  # path relative to --dir

    def describe(self) -> str:
        return f"{self.kind:9} {self.filename if self.repo is None else self.repo + ':' + self.filename}"


def layout(directory: Path) -> dict[str, Path]:
    """Where each part lives under --dir: what the start command passes to --model, --codec, --tokenizer, --voices."""
    return {"model": directory / "model", "codec": directory / "codec" / CHECKPOINT_NAME,
            "tokenizer": directory / "tokenizer", "voices": directory / "voices"}


def start_command(model: str, directory: Path | None) -> list[str]:
    """The `python -m server` arguments that load what fetch() wrote, without the network."""
    if directory is None:
        return ["python", "-m", "server", "--model", model, "--offline"]
    where = layout(directory)
    return ["python", "-m", "server", "--model", str(where["model"]), "--codec", str(where["codec"]),
            "--tokenizer", str(where["tokenizer"]), "--voices", str(where["voices"]), "--offline"]


def voice_names(choice: str) -> list[str]:
    """Preset names for --voices: v2 (default), all, none, or comma-separated names."""
    presets = list_presets()
    if choice == "none":
        return []
    if choice == "all":
        return presets
    if choice == "v2":
        return [name for name in presets if name.startswith("v2/")]
    names = [n.strip() for n in choice.split(",") if n.strip()]
    unknown = [n for n in names if n not in presets]
    if unknown:
        raise WeightsError(f"--voices: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a standard "
                           "preset (e.g. v2/en_speaker_6); use v2, all, none or preset names")
    return names


def plan(model: str, voices: str = "v2", index: dict | None = None) -> list[Item]:
    """Every file to fetch. The voices' .npy names come from the preset index (`index`); without it the
    plan lists the index file only (fetch() reads it first, then plans the prompts)."""
    if model not in MODELS:
        raise WeightsError(f"model: {model!r} is not one of {', '.join(MODELS)}")
    items = [Item("model", SUNO_REPO, fname, f"model/{fname}") for fname in SUNO_FILES[NAMED[model]].values()]
    items.append(Item("codec", None, CHECKPOINT_URL, f"codec/{CHECKPOINT_NAME}"))
    items.append(Item("tokenizer", DEFAULT_TOKENIZER_REPO, VOCAB_FILE, f"tokenizer/{VOCAB_FILE}"))
    names = voice_names(voices)
    if names:
        items.append(Item("voices", DEFAULT_HUB_REPO, INDEX_FILE, f"voices/{INDEX_FILE}"))
    if names and index is not None:
        for name in names:
            entry = index.get(name)
            if not isinstance(entry, dict):
                raise WeightsError(f"voices: preset {name!r} is not listed in {INDEX_FILE} of {DEFAULT_HUB_REPO}")
            for key in PROMPT_KEYS:
                relative = entry.get(key)
                if not isinstance(relative, str) or ".." in Path(relative).parts or Path(relative).is_absolute():
                    raise WeightsError(f"voices: {INDEX_FILE} entry {name!r} has no clean {key} path")
                items.append(Item("voices", DEFAULT_HUB_REPO, relative, f"voices/{relative}"))
    return items


def _hub_file(item: Item, offline: bool) -> Path:
    from huggingface_hub import hf_hub_download

    assert item.repo is not None
    try:
        return Path(hf_hub_download(item.repo, item.filename, local_files_only=offline))
    except Exception as exc:  # network, missing file, disk: one line naming the file
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        hint = ("; the cache holds no copy: run `python -m server.fetch` on a machine with network access and copy "
                "its caches (or --dir) here" if offline else "")
        raise WeightsError(f"could not get {item.repo}:{item.filename} ({type(exc).__name__}: {first}){hint}") from None


def _codec_file() -> Path:
    """The EnCodec checkpoint in torch hub's cache (where the encodec package looks), downloaded if absent."""
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINT_NAME
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(CHECKPOINT_URL, str(path), hash_prefix=CODEC_SHA256_PREFIX)
        except Exception as exc:  # noqa: BLE001
            raise WeightsError(f"could not get {CHECKPOINT_URL} ({type(exc).__name__}: {exc})") from None
    return path


def fetch(model: str, directory: Path | None = None, *, voices: str = "v2", offline: bool = False,
          say: Callable[[str], None] = print) -> list[Path]:
    """Fetch every planned file into the caches and, with `directory`, copy it there. `offline` only reads
    the caches (copies a cache into a directory). Returns the paths written or found."""
    from huggingface_hub import constants

    offline = offline or constants.HF_HUB_OFFLINE
    if not offline and not hub_reachable(SUNO_REPO, SUNO_FILES[NAMED[model]]["text"]):
        raise WeightsError(f"the Hugging Face hub ({constants.ENDPOINT}) did not answer: run this command on a "
                           "machine with network access, then copy the caches (or --dir) to this one and start the "
                           "server with --offline")
    items = plan(model, voices)
    index_item = next((i for i in items if i.filename == INDEX_FILE), None)
    if index_item is not None:
        import json

        index_path = _hub_file(index_item, offline)
        items = plan(model, voices, json.loads(index_path.read_text(encoding="utf-8")))
    done: list[Path] = []
    for n, item in enumerate(items, 1):
        if item.kind == "codec":
            if offline:
                import torch

                source = Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINT_NAME
                if not source.is_file():
                    raise WeightsError(f"offline: {source} is missing (download {CHECKPOINT_URL} there)")
            else:
                source = _codec_file()
        else:
            source = _hub_file(item, offline)
        if directory is not None:
            target = directory / item.target
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            source = target
        done.append(source)
        if item.kind != "voices" or item.filename == INDEX_FILE or n == len(items):
            say(f"[{n}/{len(items)}] {item.describe()} -> {source}")
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.fetch", description="Download Bark's weights, EnCodec, the "
                                "tokenizer and voice presets for servers without network access (--offline).")
    p.add_argument("model", choices=MODELS, help="bark-small (Suno's small checkpoints) or bark (the large ones)")
    p.add_argument("--dir", type=Path, default=None, help="copy everything into this directory (default: only the "
                   "standard caches, HF_HOME and TORCH_HOME)")
    p.add_argument("--voices", default="v2", help="v2 (default: the 130 v2/ presets), all, none, or preset names "
                   "separated by commas")
    p.add_argument("--offline", action="store_true", help="use only what the caches hold (e.g. to fill --dir "
                   "from a copied cache)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the start command; fetch nothing")
    args = p.parse_args(argv)
    try:
        if args.dry_run:
            for item in plan(args.model, args.voices):
                print(item.describe() + ("   (+ the .npy prompts it lists)" if item.filename == INDEX_FILE else ""))
        else:
            fetch(args.model, args.dir, voices=args.voices, offline=args.offline)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("start the server with: " + " ".join(start_command(args.model, args.dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
