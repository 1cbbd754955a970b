"""Model choices: which Bark weights to load, from where, onto which device.

Choices (the `--model` option):
  bark-small, bark            Suno's checkpoints from the hub repo suno/bark
                              (text.pt/coarse.pt/fine.pt, or text_2.pt/... for bark)
  hf:suno/bark-small, hf:suno/bark
                              transformers' BarkModel checkpoints from the hub
  a local directory           either layout, detected from the files inside
  random-tiny, random-small, random-large
                              seeded random weights of tiny / Bark-small / Bark shapes
Downloads go to the standard Hugging Face cache (HF_HOME, HF_HUB_CACHE).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .checkpoints import SUNO_FILES, _load_into, read_suno_checkpoint, read_transformers_dir
from .errors import ConfigError, WeightsError
from .hub import hub_reachable
from .models.bundle import SHAPES, BarkModels, BarkShapes, build_models

logger = logging.getLogger(__name__)

SUNO_REPO = "suno/bark"
NAMED = {"bark-small": "small", "bark": "large", "bark-large": "large"}
HF_NAMED = ("hf:suno/bark-small", "hf:suno/bark")
RANDOM = {f"random-{size}": size for size in SHAPES}
CHOICES = [*NAMED, *HF_NAMED, *RANDOM]
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu."""
    if str(device) != "auto":
        try:
            return torch.device(device)
        except RuntimeError:
            raise ConfigError(f"device: {device!r} is not a torch device (try auto, cpu, cuda, cuda:1, mps)") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on GPUs that have it (else fp16), bf16 on CPUs with native bf16, else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "mps":
            return torch.float16
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    if DTYPES[dtype] == torch.float16 and device.type == "cpu":
        raise ConfigError("dtype: fp16 is for GPUs; on cpu use bf16 or fp32")
    return DTYPES[dtype]


def _hub_cli() -> str:
    """The download command the installed huggingface_hub provides (`hf` since 1.0, `huggingface-cli` before)."""
    import shutil

    return "hf download" if shutil.which("hf") or not shutil.which("huggingface-cli") else "huggingface-cli download"


def _hub_hint(repo: str, files: list[str]) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return (
        f"looked for {', '.join(files)} in hub repo {repo} (cache {HF_HUB_CACHE}). "
        f"To fix: on a machine with internet run `{_hub_cli()} {repo} {' '.join(files)}` "
        "and copy the cache here (then pass --offline or set HF_HUB_OFFLINE=1), or download the files into a "
        "directory and pass that directory as --model. To try the server without weights: "
        "--model random-tiny --codec random --tokenizer tests/data/tokenizer"
    )


def _named_paths(repo: str, files: dict[str, str], local_files_only: bool) -> dict[str, Path]:
    """The cached files, else (hub reachable) downloaded ones; else one error naming every missing file."""
    from huggingface_hub import try_to_load_from_cache

    cached = {k: try_to_load_from_cache(repo, f) for k, f in files.items()}
    missing = [f for k, f in files.items() if not isinstance(cached[k], str)]
    if not missing:
        return {k: Path(v) for k, v in cached.items()}
    if local_files_only or not hub_reachable(repo, missing[0]):
        why = "offline mode" if local_files_only else "the hub did not answer"
        raise WeightsError(f"model files missing from the cache ({why}): {', '.join(missing)}; "
                           + _hub_hint(repo, missing))
    return {k: _download(repo, f, local_files_only=False) for k, f in files.items()}


def _download(repo: str, filename: str, *, local_files_only: bool) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=local_files_only))
    except Exception as exc:  # offline, HTTP error, missing file, ...
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc) else type(exc).__name__
        raise WeightsError(f"could not get {filename} from the Hugging Face hub ({reason}); "
                           + _hub_hint(repo, [filename])) from None


def _load_suno_files(paths: dict[str, Path], name: str) -> BarkModels:
    cfgs, states = {}, {}
    for kind, path in paths.items():
        cfgs[kind], states[kind] = read_suno_checkpoint(path, kind)
    models = build_models(BarkShapes(**cfgs), name=name)
    for kind in paths:
        _load_into(getattr(models, kind), states[kind], str(paths[kind]))
    return models


def _load_transformers_dir(directory: Path, name: str) -> BarkModels:
    shapes, states = read_transformers_dir(directory)
    models = build_models(shapes, name=name)
    for kind, state in states.items():
        _load_into(getattr(models, kind), state, f"{directory} ({kind})")
    return models


def _load_local_dir(directory: Path, name: str) -> BarkModels:
    for files in SUNO_FILES.values():
        paths = {kind: directory / fname for kind, fname in files.items()}
        if any(p.exists() for p in paths.values()):
            missing = [str(p) for p in paths.values() if not p.exists()]
            if missing:
                raise WeightsError(f"{directory}: Suno checkpoint set incomplete, missing {', '.join(missing)}")
            return _load_suno_files(paths, name)
    if (directory / "config.json").exists():
        return _load_transformers_dir(directory, name)
    raise WeightsError(
        f"{directory} holds no Bark checkpoint: expected text.pt, coarse.pt, fine.pt "
        "(or text_2.pt, coarse_2.pt, fine_2.pt) in Suno's format, or config.json plus "
        "model.safetensors from transformers' save_pretrained"
    )


def _load_choice(choice: str, local_files_only: bool, seed: int) -> BarkModels:
    if choice in RANDOM:
        return build_models(SHAPES[RANDOM[choice]], name=choice, seed=seed)
    if choice in NAMED:
        paths = _named_paths(SUNO_REPO, SUNO_FILES[NAMED[choice]], local_files_only)
        return _load_suno_files(paths, choice)
    if choice.startswith("hf:"):
        from huggingface_hub import snapshot_download

        repo = choice[3:]
        patterns = ["config.json", "*.safetensors", "*.safetensors.index.json"]
        try:
            path = snapshot_download(repo, allow_patterns=patterns, local_files_only=local_files_only)
        except Exception as exc:
            raise WeightsError(f"could not get {repo} from the Hugging Face hub ({type(exc).__name__}); "
                               + _hub_hint(repo, ["config.json", "model.safetensors"])) from None
        return _load_transformers_dir(Path(path), choice)
    path = Path(choice).expanduser()
    if path.is_dir():
        return _load_local_dir(path, choice)
    raise ConfigError(
        f"model: {choice!r} is neither a known model nor a directory; choose one of "
        f"{', '.join(CHOICES)}, or pass a directory holding Bark checkpoints"
    )


def load_models(
    choice: str,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    local_files_only: bool = False,
    seed: int = 0,
) -> BarkModels:
    """Load the text, coarse and fine models for `choice` onto `device` in `dtype`."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    models = _load_choice(choice, local_files_only, seed)
    logger.info("loaded model %s on %s as %s", choice, dev, dt)
    return models.to(dev, dt)
