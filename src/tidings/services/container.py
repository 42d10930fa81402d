"""What the interfaces get from the composition root: services and a few checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tidings.ports.clock import Clock
from tidings.ports.jobs import JobQueue
from tidings.services.apikeys import ApiKeyService
from tidings.services.campaigns import CampaignService
from tidings.services.gateway.hub import Hub
from tidings.services.inbox import InboxService
from tidings.services.ingest import IngestService
from tidings.services.notify import Orchestrator
from tidings.services.online import OnlineService
from tidings.services.preferences import PreferenceService
from tidings.services.providers import ProviderRegistry, WebhookService
from tidings.services.schedules import ScheduleService
from tidings.services.segments import SegmentService
from tidings.services.subscriber_auth import SubscriberAuth
from tidings.services.subscribers import SubscriberService
from tidings.services.templates import TemplateService
from tidings.services.testsend import TemplateTestSender


@dataclass(slots=True)
class Services:
    clock: Clock
    ingest: IngestService
    apikeys: ApiKeyService
    jobs: JobQueue
    hub: Hub
    online: OnlineService
    templates: TemplateService
    template_tests: TemplateTestSender
    schedules: ScheduleService
    webhooks: WebhookService
    providers: ProviderRegistry
    subscribers: SubscriberService
    inbox: InboxService
    subscriber_auth: SubscriberAuth
    preferences: PreferenceService
    ready_checks: dict[str, Callable[[], Awaitable[None]]]
    notify: Orchestrator | None = None
    campaigns: CampaignService | None = None
    segments: SegmentService | None = None
