"""Channel providers: outgoing webhooks over HTTP (httpx) and email over SMTP (aiosmtplib)."""

from tidings.adapters.providers.smtp import SmtpConfig, SmtpProvider
from tidings.adapters.providers.webhook import HttpWebhookProvider

__all__ = ["HttpWebhookProvider", "SmtpConfig", "SmtpProvider"]
