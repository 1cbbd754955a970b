"""Which voices the server offers, found once at start-up, and how a request's voice is loaded.

- `discover()` (blocking, before the port opens) lists the voices that can load *now*:
  the voices directory's presets, the standard presets already in the Hugging Face cache,
  and, only if the hub answers within a few seconds, every other standard preset. Without
  hub access the server says so once in its log; `ready.voices` never advertises a voice
  that would take seconds to fail.
- `resolve(name)` loads in a worker thread (never on the event loop), gives up after
  `timeout` seconds, and caches every outcome: a voice is read once, a failure is not
  retried for `failure_ttl` seconds.
- What a client is told names the voice and where to see the valid ones; server paths,
  hub details and operator advice go only to the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from streaming.errors import VoiceError, WeightsError
from streaming.voices import DEFAULT_HUB_REPO, INDEX_FILE, Voice, list_presets, load_voice
from streaming.hub import hub_reachable

log = logging.getLogger(__name__)

def active_aliases(pairs: tuple[tuple[str, str], ...], offered: list[str]) -> dict[str, str]:
    """The voice aliases in force: later pairs override earlier ones; an alias whose preset is not offered
    is left out (and logged), so no alias promises a voice that cannot load."""
    wanted = dict(pairs)
    active = {alias: preset for alias, preset in wanted.items() if preset in offered and alias not in offered}
    missing = sorted(a for a, p in wanted.items() if p not in offered)
    if missing:
        log.info("voices: %d alias(es) left out, their presets are not offered: %s", len(missing), ", ".join(
            f"{a} -> {wanted[a]}" for a in missing[:12]))
    return active


class VoiceUnavailable(Exception):
    """A voice a request cannot have; the message is safe to send to the client."""


def local_voice_names(voices_dir: Path | None) -> list[str]:
    """Presets in a voices directory: `<dir>/**.npz` (Suno layout) and a transformers index's names."""
    if voices_dir is None:
        return []
    root = Path(voices_dir).expanduser()
    names = [str(p.relative_to(root).with_suffix("")) for p in sorted(root.rglob("*.npz"))]
    index = root / INDEX_FILE
    if index.is_file():
        import json

        try:
            names += [n for n in json.loads(index.read_text(encoding="utf-8")) if isinstance(n, str)]
        except (OSError, ValueError):
            log.warning("voices: %s is unreadable; its presets are not offered", index)
    return list(dict.fromkeys(names))


class VoiceCatalog:
    def __init__(self, voices_dir: Path | None, offline: bool, *, hub_repo: str = DEFAULT_HUB_REPO,
                 timeout: float = 5.0, probe_timeout: float = 5.0, failure_ttl: float = 60.0) -> None:
        self.voices_dir, self.offline, self.hub_repo = voices_dir, offline, hub_repo
        self.timeout, self.probe_timeout, self.failure_ttl = timeout, probe_timeout, failure_ttl
        self.names: list[str] = []  # what `ready.voices` lists
        self.hub = False  # may fetch presets that are not cached
        self._voices: dict[str, Voice] = {}
        self._failures: dict[str, float] = {}  # name -> monotonic time of the failure

    # --- start-up -------------------------------------------------------------------------------
    def discover(self) -> list[str]:
        local = local_voice_names(self.voices_dir)
        cached = [name for name in self._cached_presets() if name not in local and self._loads(name, local_only=True)]
        from huggingface_hub import constants

        self.offline = self.offline or bool(constants.HF_HUB_OFFLINE)  # HF_HUB_OFFLINE=1 means no network too
        self.hub = not self.offline and self._hub_answers()
        extra = [n for n in list_presets() if n not in local and n not in cached] if self.hub else []
        self.names = local + cached + extra
        if self.offline:
            log.info("voices: %d from the voices directory, %d cached presets (offline)", len(local), len(cached))
        elif self.hub:
            log.info("voices: %d from the voices directory, %d cached presets, %d more from hub repo %s",
                     len(local), len(cached), len(extra), self.hub_repo)
        else:
            log.warning("voices: hub repo %s did not answer within %.0f s; offering only the %d local and %d "
                        "cached voices (pass --voices DIR, or --offline to skip this check)",
                        self.hub_repo, self.probe_timeout, len(local), len(cached))
        return self.names

    def _cached_presets(self) -> list[str]:
        """Standard presets worth checking in the HF cache: none unless the repo's index is cached."""
        from huggingface_hub import try_to_load_from_cache

        try:
            index = try_to_load_from_cache(self.hub_repo, INDEX_FILE)
        except Exception:  # noqa: BLE001 - an unusable cache holds nothing we can offer
            return []
        return list_presets() if isinstance(index, str) else []

    def _loads(self, name: str, *, local_only: bool) -> bool:
        try:
            self._voices[name] = load_voice(name, voices_dir=self.voices_dir, hub_repo=self.hub_repo,
                                            local_files_only=local_only)
            return True
        except (VoiceError, WeightsError):
            return False

    def _hub_answers(self) -> bool:
        """True when the hub answers a HEAD for the repo's voice index within probe_timeout seconds."""
        return hub_reachable(self.hub_repo, INDEX_FILE, self.probe_timeout)

    # --- requests ---------------------------------------------------------------------------------
    async def resolve(self, name: str) -> Voice:
        """The voice `name`, or VoiceUnavailable with a message fit for the client."""
        voice = self._voices.get(name)
        if voice is not None:
            return voice
        if name not in self.names:
            raise VoiceUnavailable(f"voice: {name[:40]!r} is not offered by this server "
                                   f"({len(self.names)} voices are)")
        failed = self._failures.get(name)
        if failed is not None and time.monotonic() - failed < self.failure_ttl:
            raise VoiceUnavailable(f"voice: {name!r} cannot be loaded right now; try another voice")
        try:
            voice = await asyncio.wait_for(asyncio.to_thread(
                load_voice, name, voices_dir=self.voices_dir, hub_repo=self.hub_repo,
                local_files_only=self.offline or not self.hub), self.timeout)
        except (VoiceError, WeightsError, asyncio.TimeoutError) as exc:
            self._failures[name] = time.monotonic()
            detail = f"timed out after {self.timeout:.0f} s" if isinstance(exc, asyncio.TimeoutError) else exc
            log.warning("voice %r failed to load: %s", name, detail)  # operator detail: paths, hub, fixes
            raise VoiceUnavailable(f"voice: {name!r} cannot be loaded right now; try another voice") from None
        self._voices[name] = voice
        return voice
