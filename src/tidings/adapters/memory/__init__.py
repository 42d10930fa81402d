"""In-process adapters: the embedded default for broker and presence, and reference
implementations of every store port for tests."""

from tidings.adapters.memory.apikeys import MemoryApiKeyStore
from tidings.adapters.memory.broker import MemoryBroker
from tidings.adapters.memory.events import MemoryEventStore
from tidings.adapters.memory.jobs import MemoryJobQueue
from tidings.adapters.memory.notify import MemoryRunStore, MemoryWorkflowStore
from tidings.adapters.memory.presence import MemoryPresenceStore

__all__ = [
    "MemoryApiKeyStore",
    "MemoryBroker",
    "MemoryEventStore",
    "MemoryJobQueue",
    "MemoryPresenceStore",
    "MemoryRunStore",
    "MemoryWorkflowStore",
]
