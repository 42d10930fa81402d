"""Ports: the interfaces services depend on, as `typing.Protocol` at domain verbs.

Each adapter (memory, SQL, Redis) implements them; one contract suite per port in
`tests/contract/` runs against every adapter.
"""

from tidings.ports.apikeys import ApiKeyStore
from tidings.ports.broker import Broker, PublicationHandler
from tidings.ports.clock import Clock
from tidings.ports.events import EventStore
from tidings.ports.jobs import JobQueue
from tidings.ports.presence import PresenceStore

__all__ = [
    "ApiKeyStore",
    "Broker",
    "Clock",
    "EventStore",
    "JobQueue",
    "PresenceStore",
    "PublicationHandler",
]
