"""Decode stage: final fine frames → 24 kHz PCM, chunk by chunk.

Each segment gets its own streaming decoder (the exact stateful decoder by
default). Chunks follow a `ChunkSchedule`: small first for latency, larger later
for efficiency. A segment shorter than the decoder's first chunk is decoded in
one shot at its end.
"""

from __future__ import annotations

import numpy as np

from ..codec import ChunkSchedule, decode_codes, make_stream_decoder
from ..segment import Segment


class DecodeStage:
    name = "decode"

    def __init__(self, codec, kind: str, schedule: ChunkSchedule) -> None:
        self.codec = codec
        self.kind = kind
        self.schedule = schedule

    def next_chunk(self, seg: Segment) -> int:
        """Frames to decode now (0 = wait)."""
        st = seg.dec
        if st.done:
            return 0
        ready = seg.fine.shape[1] - st.n_decoded
        fine_done = seg.fi is not None and seg.fi.done
        if fine_done:
            return ready if ready > 0 else -1  # -1: nothing left, finish
        size = self.schedule.next_size(st.chunks)
        return size if ready >= size else 0

    def decode(self, seg: Segment, n_frames: int) -> np.ndarray:
        """Decode the next n_frames final frames -> float32 PCM [n_frames * 320]."""
        st = seg.dec
        codes = seg.fine[:, st.n_decoded:st.n_decoded + n_frames]  # [8, n]
        if st.decoder is None:
            st.decoder = make_stream_decoder(self.codec, self.kind)
            min_first = getattr(st.decoder, "min_first_chunk", 1)
            if n_frames < min_first:  # a very short segment: one-shot
                st.decoder = None
                st.n_decoded += n_frames
                st.chunks += 1
                return decode_codes(self.codec, codes)
        pcm = st.decoder.decode(codes)
        st.n_decoded += n_frames
        st.chunks += 1
        return pcm

    def finish(self, seg: Segment) -> np.ndarray:
        """End the segment's decoder -> any PCM it held back."""
        st = seg.dec
        st.done = True
        if st.decoder is None:
            return np.zeros(0, dtype=np.float32)
        tail = st.decoder.flush()
        st.decoder = None
        return tail
