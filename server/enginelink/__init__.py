"""How the front ends reach the engine: one `EngineLink` interface, in this process or in the engine's own.

    base.py      the interface (EngineLink, EngineStream, EngineRequest), torch-free
    local.py     LocalEngine: the engine thread in this process
    process.py   EngineProcess: the engine in a child process, over a socketpair (msgpack frames)
    child.py     the child's side: loads the engine and serves the channel (imports torch)
    channel.py   the frames both sides exchange
"""

from .base import EngineInfo, EngineLink, EngineRequest, EngineStream
from .local import LocalEngine
from .process import EngineProcess  # torch-free, like the rest of this package (child.py is not imported here)

__all__ = ["EngineInfo", "EngineLink", "EngineProcess", "EngineRequest", "EngineStream", "LocalEngine"]
