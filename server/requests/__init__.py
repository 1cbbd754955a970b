"""The one request life cycle for every front end (WebSocket, OpenAI HTTP, Wyoming).

    layer.py      RequestLayer (voices, drain, health, slow-consumer watcher) and Client (one connection)
    admission.py  caps counted across every door: connections and requests per address, requests per key
    request.py    Request: credit, format pipeline, text deadlines, metrics, exactly one Done
    events.py     RequestSpec in; Audio, Segment, Flushed, Done out
    stats.py      engine results as wire values
"""

from .events import Audio, Done, Flushed, RequestEvent, RequestSpec, Segment
from .layer import Client, RequestLayer
from .request import Request

__all__ = ["Audio", "Client", "Done", "Flushed", "Request", "RequestEvent", "RequestLayer", "RequestSpec",
           "Segment"]
