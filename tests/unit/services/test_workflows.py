"""The workflow registry: files loaded at start (errors name file and field), API-defined
workflows stored with revisions and seen by other processes after the refresh interval."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.adapters.clock import ManualClock
from tidings.adapters.memory import MemoryWorkflowStore
from tidings.errors import Conflict, InvalidInput, NotFound
from tidings.services.workflows import WorkflowRegistry

STEP = {"id": "a", "type": "in_app", "content": {"title": "t", "body": "b"}}


def write(path: Path, key: str) -> None:
    path.write_text(f"key: {key}\nsteps:\n  - {{id: a, type: in_app, template: t}}\n")


async def test_files_load_from_a_directory_and_cannot_be_changed_through_the_api(
    tmp_path: Path,
) -> None:
    write(tmp_path / "a.yaml", "one")
    write(tmp_path / "b.yml", "two")
    (tmp_path / "notes.txt").write_text("not a workflow")
    registry = WorkflowRegistry(MemoryWorkflowStore(), ManualClock())
    assert registry.load_files([tmp_path]) == 2
    assert (await registry.get("one")) is not None
    with pytest.raises(Conflict) as refused:
        await registry.put("one", {"steps": [STEP]})
    assert "a.yaml" in refused.value.message
    with pytest.raises(Conflict):
        await registry.delete("one")
    assert (await registry.get("one")) is not None


async def test_a_bad_file_or_a_key_in_two_files_stops_the_load(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "one")
    write(tmp_path / "b.yaml", "one")
    registry = WorkflowRegistry(MemoryWorkflowStore(), ManualClock())
    with pytest.raises(InvalidInput) as twice:
        registry.load_files([tmp_path])
    assert "also defined in" in twice.value.message
    bad = tmp_path / "bad.yaml"
    bad.write_text("key: x\nsteps:\n  - {id: a, type: delay, duration: soon}\n")
    with pytest.raises(InvalidInput) as broken:
        registry.load_files([bad])
    assert str(bad) in broken.value.message and broken.value.field == "steps[0].duration"


async def test_another_process_sees_a_new_workflow_at_once_and_a_change_after_refresh() -> None:
    store, clock = MemoryWorkflowStore(), ManualClock()
    here = WorkflowRegistry(store, clock, refresh=5.0)
    there = WorkflowRegistry(store, clock, refresh=5.0)
    assert await there.get("k") is None
    record = await here.put("k", {"steps": [STEP]})
    assert record.revision == 1 and await here.get("k") is not None
    # a key it did not know is read from the store: an event sent through the other
    # process right after the definition finds it
    found = await there.get("k")
    assert found is not None and [s.id for s in found.steps] == ["a"]
    await here.put("k", {"steps": [{**STEP, "id": "b"}]})
    known = await there.get("k")  # known, read 0 s ago: the change waits for the refresh
    assert known is not None and [s.id for s in known.steps] == ["a"]
    clock.advance(5)
    changed = await there.get("k")
    assert changed is not None and [s.id for s in changed.steps] == ["b"]
    with pytest.raises(InvalidInput) as bad:
        await here.put("k", {"steps": [{"id": "a", "type": "in_app"}]})
    assert bad.value.field == "steps[0].template"
    await here.delete("k")
    with pytest.raises(NotFound):
        await here.delete("k")
