"""Workflows by key: from files (loaded at start), from Python, and defined through the API
(stored; every process re-reads them periodically)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tidings.core.notify import ChannelStep, Workflow, parse_workflow
from tidings.core.notify.parse import check_content, parse_workflow_definitions
from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.ports.clock import Clock
from tidings.ports.notify import WorkflowRecord, WorkflowStore
from tidings.ports.providers import WebhookEndpointStore
from tidings.ports.templates import TemplateStore
from tidings.records import record

log = logging.getLogger(__name__)

WORKFLOW_FILES = (".yaml", ".yml", ".json")


@record
class _Fixed:
    """A workflow from a file or from Python: read-only through the API."""

    workflow: Workflow
    source: str  # the file's path, or "python"
    definition: Mapping[str, Any] | None  # as written in the file; None from Python


class WorkflowRegistry:
    """Workflows by key: those in files (loaded at start, read-only) and those defined through
    the API (stored; this process re-reads them every `refresh` seconds so a change made
    through another process applies within that time)."""

    def __init__(self, store: WorkflowStore, clock: Clock, refresh: float = 5.0) -> None:
        self.store = store
        self._clock = clock
        self._refresh = refresh
        self._files: dict[str, _Fixed] = {}
        self._api: dict[str, tuple[Workflow, WorkflowRecord]] = {}
        self._loaded_at = float("-inf")

    def load_files(self, paths: Iterable[str | Path]) -> int:
        """Load every ``*.yaml``/``*.yml``/``*.json`` file (or directory of them). A bad file
        raises ``InvalidInput`` whose message starts ``workflows file <path>:`` and names the
        field: the service does not start. The checks are those of ``PUT /v1/workflows``
        except one: a named template need not exist yet (templates live in the database and
        may be created after the start)."""
        found: dict[str, _Fixed] = {}
        for raw in paths:
            path = Path(raw)
            if not path.exists():
                raise InvalidInput(f"workflows file {path}: not found", field="notify.workflows")
            files = (
                sorted(p for p in path.iterdir() if p.suffix in WORKFLOW_FILES)
                if path.is_dir()
                else [path]
            )
            for file in files:
                try:
                    text = file.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                    raise InvalidInput(
                        f"workflows file {file}: cannot read it: {why or exc}",
                        field="notify.workflows",
                    ) from None
                source = f"workflows file {file}"
                for workflow, definition in parse_workflow_definitions(text, source=source):
                    if workflow.key in found:
                        raise InvalidInput(
                            f"{source}: workflow {workflow.key!r} is also defined in "
                            f"{found[workflow.key].source}",
                            field="key",
                        )
                    found[workflow.key] = _Fixed(workflow, str(file), definition)
        self._files = found
        return len(found)

    def add(self, workflow: Workflow, source: str = "python") -> None:
        """Register a workflow built in Python (read-only, like files); its inline content
        is checked as a file's is."""
        check_content(workflow)
        self._files[workflow.key] = _Fixed(workflow, source, None)

    async def reload(self) -> None:
        loaded: dict[str, tuple[Workflow, WorkflowRecord]] = {}
        for stored in await self.store.all():
            try:
                # Accepted when it was stored: it runs as it is, and the definition stays
                # visible even if a check added since would refuse it now.
                workflow = parse_workflow(stored.definition, check_content=False)
            except InvalidInput:
                log.exception("stored workflow no longer parses", extra={"key": stored.key})
                continue
            loaded[stored.key] = (workflow, stored)
        self._api = loaded
        self._loaded_at = self._clock.now()

    async def get(self, key: str) -> Workflow | None:
        if key in self._files:
            return self._files[key].workflow
        if self._clock.now() - self._loaded_at >= self._refresh:
            await self.reload()
        found = self._api.get(key)
        if found is None:
            # Not known here yet: defined a moment ago through another process, its event
            # sent through this one. One row's read decides, not the next refresh.
            stored = await self.store.get(key)
            if stored is None:
                return None
            try:
                workflow = parse_workflow(stored.definition, check_content=False)
            except InvalidInput:
                log.exception("stored workflow no longer parses", extra={"key": key})
                return None
            found = self._api[key] = (workflow, stored)
        return found[0]

    async def put(
        self,
        key: str,
        definition: Mapping[str, Any],
        *,
        templates: TemplateStore | None = None,
        endpoints: WebhookEndpointStore | None = None,
    ) -> WorkflowRecord:
        """Define or replace an API workflow, refusing what would fail on every trigger and
        naming the field: everything `parse_workflow` checks and, given the template store,
        that each named ``template`` exists for the step's channel; given the endpoint
        store, that each webhook step's ``endpoint`` exists."""
        if key in self._files:
            raise Conflict(
                f"workflow {key!r} is defined in {self._files[key].source}; change it there"
            )
        body = {**definition, "key": key}
        workflow = parse_workflow(body)
        if templates is not None:
            await check_templates(workflow, templates)
        if endpoints is not None:
            await check_endpoints(workflow, endpoints)
        stored = await self.store.put(key, body, self._clock.now())
        await self.reload()
        return stored

    async def delete(self, key: str) -> None:
        if key in self._files:
            raise Conflict(
                f"workflow {key!r} is defined in {self._files[key].source}; remove it there"
            )
        if not await self.store.delete(key):
            raise NotFound(f"workflow {key} not found")
        await self.reload()

    async def listing(self) -> list[dict[str, Any]]:
        """Every workflow with its definition: as written (a file's mapping, the stored body
        of an API workflow; both hold the key); a Python workflow has no written form and
        shows its key, name, flags and step ids and types."""
        await self.reload()
        out: list[dict[str, Any]] = [
            {
                "key": k,
                "source": fixed.source,
                "revision": None,
                "workflow": (
                    dict(fixed.definition)
                    if fixed.definition is not None
                    else _summary(fixed.workflow)
                ),
            }
            for k, fixed in sorted(self._files.items())
        ]
        out += [
            {"key": k, "source": "api", "revision": r.revision, "workflow": dict(r.definition)}
            for k, (_, r) in sorted(self._api.items())
            if k not in self._files
        ]
        return out


async def check_templates(workflow: Workflow, templates: TemplateStore) -> None:
    """Refuse a channel step whose ``template`` does not exist, or is for another channel
    (a webhook step takes a template of any channel), naming ``steps[i].template``. A
    template that has no published version yet passes: publishing it makes the step work."""
    for index, step in enumerate(workflow.steps):
        if not isinstance(step, ChannelStep) or step.template is None:
            continue
        where = f"steps[{index}].template"
        try:
            found = await templates.get(step.template)
        except NotFound:
            raise InvalidInput(
                f"no template {step.template!r}: create it first (POST /v1/templates)",
                field=where,
            ) from None
        if not step.takes_template_for(found.channel):
            raise InvalidInput(
                f"template {step.template!r} is for {found.channel}; the step sends "
                f"{step.channel.value}",
                field=where,
            )


async def check_endpoints(workflow: Workflow, endpoints: WebhookEndpointStore) -> None:
    """Refuse a webhook step whose ``endpoint`` names no endpoint (it could never send),
    naming ``steps[i].endpoint``. A disabled endpoint passes: enabling it makes the step
    work."""
    for index, step in enumerate(workflow.steps):
        if not isinstance(step, ChannelStep) or step.endpoint is None:
            continue
        try:
            await endpoints.get(step.endpoint)
        except NotFound:
            raise InvalidInput(
                f"no webhook endpoint {step.endpoint!r}: create it first "
                "(POST /v1/webhooks/endpoints)",
                field=f"steps[{index}].endpoint",
            ) from None


def _summary(w: Workflow) -> dict[str, Any]:
    return {
        "key": w.key,
        "name": w.name,
        "critical": w.critical,
        "commercial": w.commercial,
        "steps": [{"id": s.id, "type": s.kind} for s in w.steps],
    }
