"""Delivery to channel providers, pure: message types, outcomes and their failure classes,
classification of HTTP and SMTP answers, Retry-After, the circuit breaker and the token
bucket. Time is always passed in; nothing here does I/O."""

from tidings.core.delivery.breaker import BreakerConfig, BreakerState, CircuitBreaker
from tidings.core.delivery.classify import classify_http, classify_smtp, parse_retry_after
from tidings.core.delivery.messages import (
    Bounce,
    DeliveryChannel,
    DeliveryResult,
    EmailMessage,
    WebhookMessage,
)
from tidings.core.delivery.ratelimit import TokenBucket

__all__ = [
    "Bounce",
    "BreakerConfig",
    "BreakerState",
    "CircuitBreaker",
    "DeliveryChannel",
    "DeliveryResult",
    "EmailMessage",
    "TokenBucket",
    "WebhookMessage",
    "classify_http",
    "classify_smtp",
    "parse_retry_after",
]
