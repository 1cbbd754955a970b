"""Output audio formats: Bark's 24 kHz float signal -> the bytes a request asked for, chunk by chunk.

    pipeline = AudioPipeline("ogg_opus", sample_rate=48_000)   # or "pcm_mulaw" at 8000, "mp3", "wav", ...
    out = pipeline.feed(samples)      # Encoded(data, first_sample, samples); data may be empty
    tail = pipeline.finish()          # what the resampler and the encoder still held
    pipeline.close()                  # always (cancelled requests never call finish)

The stages, each streaming with its state carried across chunks:

    float 24 kHz ──► TimeStretch (speed, HTTP only) ──► Resampler (soxr) ──► encoder ──► bytes
                     tempo.py                            resample.py          encoders.py

Both the WebSocket sessions and the HTTP API use it. Work that is more than a
sample-format conversion (time-stretching, resampling, a compressed encoder)
runs in a worker thread (`AudioPipeline.threaded`), never on the event loop.
"""

from .encoders import CONTAINERS, FORMATS, PCM_FORMATS
from .pipeline import AudioPipeline, Encoded, convert
from .resample import Resampler
from .tempo import MAX_SPEED, MIN_SPEED, TimeStretch

__all__ = ["AudioPipeline", "Encoded", "convert", "Resampler", "TimeStretch", "FORMATS", "PCM_FORMATS", "CONTAINERS",
           "MIN_SPEED", "MAX_SPEED"]
