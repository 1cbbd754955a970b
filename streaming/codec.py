"""EnCodec for Bark: loading, one-shot decoding, chunk schedules and the streaming decoders.

Public entry points (the decoders themselves live in codec_stateful / codec_crossfade):

    load_codec(source)                  -> EncodecModel at 6 kbps (8 codebooks), eval mode
    decode_codes(model, codes [8, T])   -> float32 PCM [T*320], same math as Bark's codec_decode
    make_stream_decoder(model, kind)    -> object with .decode(codes [8, t]) / .flush() / .reset()
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from streaming.codec_crossfade import CrossfadeDecoder, SegmentJoiner, crossfade_join, fade_curves
from streaming.codec_decode import decode_codes, decode_codes_batch
from streaming.codec_stateful import StatefulDecoder
from streaming.encodec_compat import import_encodec
from streaming.errors import ConfigError, WeightsError

if TYPE_CHECKING:
    from encodec import EncodecModel

__all__ = [
    "BANDWIDTH_KBPS", "CHECKPOINT_NAME", "CHECKPOINT_URL", "DECODER_KINDS", "DEFAULT_DECODER",
    "ChunkSchedule", "CrossfadeDecoder", "SegmentJoiner", "StatefulDecoder", "StreamDecoder",
    "crossfade_join", "decode_codes", "decode_codes_batch", "fade_curves", "load_codec",
    "make_stream_decoder", "save_codec_state",
]

logger = logging.getLogger(__name__)

BANDWIDTH_KBPS = 6.0  # 6 kbps at 75 Hz = 8 codebooks, what Bark's fine model emits
CHECKPOINT_NAME = "encodec_24khz-d7cc33bc.th"
CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/encodec/v0/" + CHECKPOINT_NAME

# Measured with bench/decoders.py (random weights, 2-core shared CPU, float32, 4 s of audio,
# one-shot 28 ms per audio second). Same chunk schedule for both decoders:
#   schedule 8,16,32,64: stateful SNR 131 dB (max diff 8e-7 of peak), 34 ms/audio s;
#                        crossfade ctx 5: 45-47 dB, 38-40 ms/s; ctx 10: 87-90 dB, 40-42 ms/s
#   7 then 1 frame:      stateful 129 dB, 246 ms/s; crossfade ctx 5: 32 dB, ~1000 ms/s
# The stateful decoder is exact (float rounding only) and the cheapest at every schedule,
# since it never re-decodes context; the crossfade decoder needs >= 10 frames of context to
# pass 80 dB even with random weights and costs (context + chunk) / chunk times the compute.
DEFAULT_DECODER = "stateful"
DECODER_KINDS = ("stateful", "crossfade")


class StreamDecoder(Protocol):
    """What the decode stage needs from a streaming decoder."""

    def decode(self, codes_chunk: np.ndarray | torch.Tensor) -> np.ndarray: ...  # [8, t] -> PCM [n]

    def flush(self) -> np.ndarray: ...  # end of stream -> remaining PCM [n]

    def reset(self) -> None: ...


@dataclass(frozen=True)
class ChunkSchedule:
    """Frames per decode step: small first for latency, growing for efficiency."""

    first: int = 8  # frames in chunk 0 (the stateful decoder needs >= 7)
    growth: float = 2.0  # each later chunk is this many times the previous one
    max: int = 64  # cap on any chunk

    def __post_init__(self) -> None:
        if self.first < 1:
            raise ConfigError(f"ChunkSchedule.first must be >= 1 frame, got {self.first}.")
        if not (self.growth >= 1.0 and math.isfinite(self.growth)):
            raise ConfigError(f"ChunkSchedule.growth must be a finite number >= 1.0, got {self.growth}.")
        if self.max < self.first:
            raise ConfigError(f"ChunkSchedule.max ({self.max}) must be >= first ({self.first}).")

    def next_size(self, chunk_index: int) -> int:
        """Frames in chunk number `chunk_index` (0-based)."""
        if chunk_index < 0:
            raise ConfigError(f"chunk_index must be >= 0, got {chunk_index}.")
        if self.growth == 1.0:
            return self.first
        exponent = min(chunk_index, math.ceil(math.log(self.max / self.first, self.growth)) + 1)
        return min(self.max, int(round(self.first * self.growth**exponent)))

    def split(self, n_frames: int) -> list[int]:
        """Chunk sizes covering n_frames (the last one possibly shorter)."""
        sizes: list[int] = []
        while sum(sizes) < n_frames:
            sizes.append(min(self.next_size(len(sizes)), n_frames - sum(sizes)))
        return sizes


def make_stream_decoder(model: EncodecModel, kind: str = DEFAULT_DECODER, **kw: object) -> StreamDecoder:
    """A fresh per-stream decoder: "stateful" (exact) or "crossfade" (kw go to CrossfadeDecoder)."""
    if kind == "stateful":
        if kw:
            raise ConfigError(f"the stateful decoder takes no options, got {sorted(kw)}.")
        return StatefulDecoder(model)
    if kind == "crossfade":
        return CrossfadeDecoder(model, **kw)  # type: ignore[arg-type]
    raise ConfigError(f"decoder kind must be one of {DECODER_KINDS}, got {kind!r}.")


# Decoded-audio SNR against fp32, random 24 kHz weights, 2 s of random codes (CPU, 2026-11-29):
# fp16 64.3 dB, bf16 45.6 dB. "auto" stays fp32 until the device bench (bench/gpu.py) measures
# trained weights on a GPU; fp16 is the candidate that clears the 60 dB bar.
CODEC_DTYPES = {"auto": torch.float32, "fp32": torch.float32, "float32": torch.float32,
                "fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def load_codec(source: str = "pretrained", *, device: str | torch.device = "cpu", seed: int = 0,
               dtype: str = "auto") -> EncodecModel:
    """The 24 kHz EnCodec at 6 kbps in eval mode.

    source: "pretrained" (download into the torch hub cache), "random" (seeded random
    weights, codebooks included), "random-tiny" (the same architecture with few
    channels: benchmarks of the engine's own cost) or the path of a local state-dict
    file (.th / .pt).
    """
    if source == "pretrained":
        model = _load_pretrained()
    elif source in ("random", "random-tiny"):
        model = _random_model(seed, tiny=source == "random-tiny")
    else:
        model = _load_local(Path(os.fspath(source)))
    if dtype not in CODEC_DTYPES:
        raise ConfigError(f"codec_dtype: {dtype!r} is not one of {', '.join(CODEC_DTYPES)}")
    model.set_target_bandwidth(BANDWIDTH_KBPS)
    return model.to(device=device, dtype=CODEC_DTYPES[dtype]).eval()


def save_codec_state(model: EncodecModel, path: str | os.PathLike[str]) -> Path:
    """Write the model's state dict to `path` (loadable with load_codec(path)); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), p)
    return p


def _build(pretrained: bool) -> EncodecModel:
    with warnings.catch_warnings():  # encodec uses the deprecated (still working) weight_norm
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        return import_encodec().EncodecModel.encodec_model_24khz(pretrained=pretrained)


def _tiny_model() -> EncodecModel:
    """The 24 kHz architecture (causal SEANet, same strides, 2-layer LSTM, 8 codebooks) with
    2 base filters and 16-dim codes instead of 32 and 128."""
    e = import_encodec()
    kw = dict(channels=1, dimension=16, n_filters=2, norm="weight_norm", causal=True)
    encoder, decoder = e.modules.SEANetEncoder(**kw), e.modules.SEANetDecoder(**kw)
    quantizer = e.quantization.ResidualVectorQuantizer(dimension=16, n_q=8, bins=1024)
    return e.EncodecModel(encoder, decoder, quantizer, [BANDWIDTH_KBPS], 24_000, 1, name="random-tiny")


def _random_model(seed: int, tiny: bool = False) -> EncodecModel:
    """Same architecture, seeded weights; codebooks get N(0, 1) entries (they start at zero)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if tiny:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
                model = _tiny_model()
        else:
            model = _build(pretrained=False)
        for layer in model.quantizer.vq.layers:
            layer._codebook.embed.normal_()  # [1024, 128]
            layer._codebook.inited.fill_(1.0)
    return model


def _load_pretrained() -> EncodecModel:
    try:
        return _build(pretrained=True)
    except Exception as exc:  # network, cache permission, hash mismatch: all end here
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsError(
            f"could not load the pretrained EnCodec 24 kHz checkpoint {CHECKPOINT_NAME} "
            f"from {CHECKPOINT_URL} ({type(exc).__name__}: {exc}). Looked in the torch hub cache "
            f"{cache}. Fix: download it there on a machine with network access "
            f"(e.g. curl -L -o {cache / CHECKPOINT_NAME} {CHECKPOINT_URL}), or pass the path of a "
            "local state-dict file with --codec PATH (Python: load_codec(PATH)); --codec random runs without "
            "weights."
        ) from exc


def _load_local(path: Path) -> EncodecModel:
    if not path.is_file():
        raise WeightsError(
            f"EnCodec state-dict file {path} does not exist. --codec takes 'pretrained', "
            "'random', 'random-tiny' or the path of a state dict saved with save_codec_state / the "
            f"{CHECKPOINT_NAME} checkpoint."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"EnCodec state-dict file {path} could not be read ({type(exc).__name__}: {exc}); "
            "it is corrupt or not a torch state dict. Re-download or re-save it."
        ) from exc
    if not isinstance(state, dict):
        raise WeightsError(f"EnCodec file {path} holds a {type(state).__name__}, not a state dict.")
    model = _build(pretrained=False)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(
            f"EnCodec file {path} is not a 24 kHz EnCodec state dict ({str(exc).splitlines()[0]}). "
            f"Use the {CHECKPOINT_NAME} checkpoint or a file written by save_codec_state."
        ) from exc
    logger.info("loaded EnCodec weights from %s", path)
    return model
