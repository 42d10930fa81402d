"""The delivery layer's services: guarded providers and outgoing webhook endpoints."""

from tidings.services.providers.guard import GuardedProvider, ProviderRegistry, RateLimit
from tidings.services.providers.webhooks import WebhookService

__all__ = ["GuardedProvider", "ProviderRegistry", "RateLimit", "WebhookService"]
