"""Subprocess for tests/test_player.py: play samples through `Player` into ALSA.

    python tests/alsa/play.py IN.npy STATS.json PREBUFFER_MS [SPLIT]

Plays float32 [n] samples from IN.npy with the default output device (set up by
the caller's ALSA_CONFIG_PATH); with SPLIT, writes samples[:SPLIT], waits until
the player has run dry, then writes the rest. Writes `PlayerStats` as JSON.
Exits with status 3 and the error's message when playback is unavailable.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np

from client.player import PlaybackUnavailable, Player, PlayerConfig


def main(argv: list[str]) -> None:
    samples = np.load(argv[1])
    split = int(argv[4]) if len(argv) > 4 else samples.size
    with Player(PlayerConfig(prebuffer_ms=float(argv[3]))) as player:
        player.write(samples[:split])
        if split < samples.size:
            assert player.wait_dry(timeout=10), "the player never ran dry"
            player.write(samples[split:])
        player.finish()
        assert player.wait(timeout=10), "playback did not finish"
        stats = player.stats
    with open(argv[2], "w") as f:
        json.dump(dataclasses.asdict(stats), f)


if __name__ == "__main__":
    try:
        main(sys.argv)
    except PlaybackUnavailable as e:
        print(e, file=sys.stderr)
        sys.exit(3)
