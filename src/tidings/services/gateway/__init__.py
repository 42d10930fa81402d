"""The real-time gateway: a hub of local subscribers over the broker, and transport-agnostic
client connections driven by the pure Centrifuge protocol session."""

from tidings.services.gateway.client import ClientConnection, Transport
from tidings.services.gateway.hub import EncodedBatch, EncodedPush, GatewayOptions, Hub

__all__ = [
    "ClientConnection",
    "EncodedBatch",
    "EncodedPush",
    "GatewayOptions",
    "Hub",
    "Transport",
]
