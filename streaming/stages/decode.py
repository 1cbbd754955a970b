"""Decode stage: final fine frames → 24 kHz PCM, chunk by chunk.

Each segment gets its own streaming decoder state (the exact stateful decoder
by default). Chunks follow a `ChunkSchedule`: small first for latency, larger
later for efficiency. Every chunk due in a tick with the same length and phase
(first chunk, later chunk, or a segment too short for the stateful decoder,
decoded in one shot) is decoded in one batched call: the stateful decoders'
carried states are stacked over the streams and split back afterwards. The PCM
is published on the segment (`seg.dec.pcm`) for the engine to emit.
"""

from __future__ import annotations

import numpy as np

from ..codec import ChunkSchedule, decode_codes_batch, make_stream_decoder
from ..codec_stateful import StatefulDecoder, build_steps, decode_together
from ..params import SamplingParams, StreamPolicy
from ..segment import Segment
from .base import StageWork


class DecodeStage:
    name = "decode"
    model_actions = frozenset({"chunk"})

    def __init__(self, codec, kind: str, schedule: ChunkSchedule) -> None:
        self.codec = codec
        self.kind = kind
        self.schedule = schedule
        self.steps = build_steps(codec.decoder) if kind == "stateful" else None  # shared by every stream
        # frames a decoder's first chunk needs (7 for the stateful decoder; 1 for crossfade)
        self.min_first = getattr(self._new_decoder(), "min_first_chunk", 1)

    def _new_decoder(self):
        if self.kind == "stateful":
            return StatefulDecoder(self.codec, self.steps)
        return make_stream_decoder(self.codec, self.kind)

    def free_slots(self) -> int:
        return 0

    def work(self, seg: Segment, policy: StreamPolicy | None = None) -> StageWork | None:
        """A 'chunk' of n frames (key: n and phase), 'finish', or None (wait)."""
        st = seg.dec
        if st.done:
            return None
        ready = seg.fine.shape[1] - st.n_decoded
        fine_done = seg.fi is not None and seg.fi.done
        if fine_done and ready <= 0:
            return StageWork("finish")
        n = ready if fine_done else self.schedule.next_size(st.chunks)
        if n <= 0 or ready < n:
            return None
        if st.decoder is None:
            phase = "oneshot" if n < self.min_first else "first"
        else:
            phase = "next"
        return StageWork("chunk", key=(n, phase), cost=n)

    def run(self, action: str, segs: list[Segment], params: list[SamplingParams], items: list[StageWork]) -> None:
        if action == "finish":
            for seg in segs:
                self.finish(seg)
            return
        n, phase = items[0].key
        codes = np.stack([seg.fine[:, seg.dec.n_decoded:seg.dec.n_decoded + n] for seg in segs])  # [B, 8, n]
        if phase == "oneshot":  # a very short segment: decoded whole, no decoder state
            pcm = decode_codes_batch(self.codec, codes)
        else:
            for seg in segs:
                if seg.dec.decoder is None:
                    seg.dec.decoder = self._new_decoder()
            if self.kind == "stateful":
                pcm = decode_together([seg.dec.decoder for seg in segs], codes)
            else:  # the crossfade decoder has no batched form: one stream at a time
                pcm = [seg.dec.decoder.decode(c) for seg, c in zip(segs, codes)]
        for seg, out in zip(segs, pcm):
            seg.dec.pcm.append(out)
            seg.dec.n_decoded += n
            seg.dec.chunks += 1

    def finish(self, seg: Segment) -> None:
        """End the segment's decoder; any PCM it held back is published."""
        st = seg.dec
        st.done = True
        if st.decoder is not None:
            tail = st.decoder.flush()
            st.decoder = None
            if len(tail):
                st.pcm.append(tail)

    def release(self, seg: Segment) -> None:
        seg.dec.decoder = None
