"""Workflows by key: from files (loaded at start), from Python, and defined through the API
(stored; every process re-reads them periodically)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tidings.core.notify import Workflow, parse_workflow, parse_workflows_text
from tidings.errors import InvalidInput, NotFound
from tidings.ports.clock import Clock
from tidings.ports.notify import WorkflowRecord, WorkflowStore

log = logging.getLogger(__name__)


class WorkflowRegistry:
    """Workflows by key: those in files (loaded at start, read-only) and those defined through
    the API (stored; this process re-reads them every `refresh` seconds so a change made
    through another process applies within that time)."""

    def __init__(self, store: WorkflowStore, clock: Clock, refresh: float = 5.0) -> None:
        self.store = store
        self._clock = clock
        self._refresh = refresh
        self._files: dict[str, tuple[Workflow, str]] = {}
        self._api: dict[str, tuple[Workflow, WorkflowRecord]] = {}
        self._loaded_at = float("-inf")

    def load_files(self, paths: Iterable[str | Path]) -> int:
        """Load every ``*.yaml``/``*.yml``/``*.json`` file (or directory of them). A bad file
        raises ``InvalidInput`` naming the file and the field: the service does not start."""
        found: dict[str, tuple[Workflow, str]] = {}
        for raw in paths:
            path = Path(raw)
            files = (
                sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
                if path.is_dir()
                else [path]
            )
            for file in files:
                for workflow in parse_workflows_text(file.read_text(), source=str(file)):
                    if workflow.key in found:
                        raise InvalidInput(
                            f"{file}: workflow {workflow.key!r} is also defined in "
                            f"{found[workflow.key][1]}",
                            field="key",
                        )
                    found[workflow.key] = (workflow, str(file))
        self._files = found
        return len(found)

    def add(self, workflow: Workflow, source: str = "python") -> None:
        """Register a workflow built in Python (read-only, like files)."""
        self._files[workflow.key] = (workflow, source)

    async def reload(self) -> None:
        loaded: dict[str, tuple[Workflow, WorkflowRecord]] = {}
        for record in await self.store.all():
            try:
                loaded[record.key] = (parse_workflow(record.definition), record)
            except InvalidInput:
                log.exception("stored workflow no longer parses", extra={"key": record.key})
        self._api = loaded
        self._loaded_at = self._clock.now()

    async def get(self, key: str) -> Workflow | None:
        if key in self._files:
            return self._files[key][0]
        if self._clock.now() - self._loaded_at >= self._refresh:
            await self.reload()
        found = self._api.get(key)
        return None if found is None else found[0]

    async def put(self, key: str, definition: Mapping[str, Any]) -> WorkflowRecord:
        if key in self._files:
            raise InvalidInput(
                f"workflow {key!r} is defined in {self._files[key][1]}; change it there",
                field="key",
            )
        body = {**definition, "key": key}
        parse_workflow(body)  # refuse what would not run, naming the field
        record = await self.store.put(key, body, self._clock.now())
        await self.reload()
        return record

    async def delete(self, key: str) -> None:
        if key in self._files:
            raise InvalidInput(f"workflow {key!r} is defined in {self._files[key][1]}")
        if not await self.store.delete(key):
            raise NotFound(f"workflow {key} not found")
        await self.reload()

    async def listing(self) -> list[dict[str, Any]]:
        await self.reload()
        out: list[dict[str, Any]] = [
            {"key": k, "source": src, "revision": None, "workflow": _workflow_json(w)}
            for k, (w, src) in sorted(self._files.items())
        ]
        out += [
            {"key": k, "source": "api", "revision": r.revision, "workflow": dict(r.definition)}
            for k, (_, r) in sorted(self._api.items())
            if k not in self._files
        ]
        return out


def _workflow_json(w: Workflow) -> dict[str, Any]:
    return {
        "key": w.key,
        "name": w.name,
        "critical": w.critical,
        "commercial": w.commercial,
        "steps": [{"id": s.id, "type": s.kind} for s in w.steps],
    }
