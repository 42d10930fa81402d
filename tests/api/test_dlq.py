"""The dead-letter queue over the admin API and the CLI: list, inspect, replay and discard,
one by one and by filter."""

from __future__ import annotations

import asyncio
import json

from typer.testing import CliRunner

from tests.api.conftest import Api
from tidings.cli import app as cli
from tidings.types import JobState, NewJob, Priority


async def bury(api: Api, kind: str, error: str) -> str:
    """A dead job of `kind` whose last error is `error` (the workers are stopped first, so
    they take nothing)."""
    for pool in api.runtime.pools:
        await pool.stop()
    jobs = api.runtime.services.jobs
    job_id = await jobs.enqueue(NewJob(kind=kind, payload={"k": kind}))
    [claimed] = await jobs.claim("w", [Priority.TRANSACTIONAL], 10, 30)
    assert claimed.id == job_id
    assert claimed.lease_token is not None
    await jobs.dead_letter(job_id, claimed.lease_token, error)
    return job_id


async def test_inspect_and_filtered_replay_and_discard(api: Api) -> None:
    a = await bury(api, "notify.deliver", "transient: SMTP 451 try later")
    b = await bury(api, "notify.deliver", "permanent: 550 no such user")
    c = await bury(api, "event.dispatch", "transient: timeout")
    admin = api.auth(api.admin_key)

    listed = await api.client.get("/v1/admin/dlq", headers=admin)
    assert [j["id"] for j in listed.json()] == [a, b, c]
    one = await api.client.get(f"/v1/admin/dlq/{b}", headers=admin)
    assert one.status_code == 200
    assert one.json()["last_error"] == "permanent: 550 no such user"
    assert one.json()["payload"] == {"k": "notify.deliver"}
    assert one.json()["messages"] == []  # it carries no message id

    replayed = await api.client.post(
        "/v1/admin/dlq/replay",
        json={"kind": "notify.deliver", "error_contains": "451"},
        headers=admin,
    )
    assert replayed.json() == {"count": 1, "ids": [a]}
    job = await api.runtime.services.jobs.get(a)
    assert job is not None and job.state is JobState.QUEUED

    discarded = await api.client.post(
        "/v1/admin/dlq/discard", json={"kind": "event.dispatch"}, headers=admin
    )
    assert discarded.json() == {"count": 1, "ids": [c]}
    left = await api.client.get("/v1/admin/dlq", headers=admin)
    assert [j["id"] for j in left.json()] == [b]

    gone = await api.client.get(f"/v1/admin/dlq/{a}", headers=admin)  # replayed: not dead
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"
    # an empty selection is refused, not read as "everything"
    for verb in ("replay", "discard"):
        empty = await api.client.post(f"/v1/admin/dlq/{verb}", json={}, headers=admin)
        assert empty.status_code == 422
        assert empty.headers["content-type"] == "application/problem+json"
        assert '"all": true' in empty.json()["detail"]
    assert [j["id"] for j in (await api.client.get("/v1/admin/dlq", headers=admin)).json()] == [b]
    bad = await api.client.post("/v1/admin/dlq/replay", json={"limit": 0}, headers=admin)
    assert bad.status_code == 422 and "limit" in bad.text
    unknown = await api.client.post("/v1/admin/dlq/replay", json={"nope": 1}, headers=admin)
    assert unknown.status_code == 422
    forbidden = await api.client.post("/v1/admin/dlq/replay", json={}, headers=api.auth())
    assert forbidden.status_code == 403


async def test_cli_show_replay_by_filter_and_refuses_an_empty_selection(api: Api) -> None:
    a = await bury(api, "notify.deliver", "transient: SMTP 451 try later")
    b = await bury(api, "notify.deliver", "permanent: 550 no such user")
    env = {
        "TIDINGS_DATABASE_URL": api.runtime.settings.database_url,
        "TIDINGS_TOKEN_SECRET": "t" * 64,
    }
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, ["dlq", *args], env=env)
        return result.exit_code, result.output

    # at 80 columns (a pipe's default) the ids come whole, ready for `show` and `replay`
    code, output = await asyncio.to_thread(run, "list")
    assert code == 0 and a in output and b in output
    code, output = await asyncio.to_thread(run, "list", "--json")
    assert code == 0
    listed = [json.loads(line) for line in output.splitlines()]
    assert [(j["id"], j["kind"], j["last_error"]) for j in listed] == [
        (a, "notify.deliver", "transient: SMTP 451 try later"),
        (b, "notify.deliver", "permanent: 550 no such user"),
    ]
    code, output = await asyncio.to_thread(run, "show", b)
    assert code == 0 and "550 no such user" in output
    code, output = await asyncio.to_thread(run, "replay")
    assert code == 2 and "--all" in output
    code, output = await asyncio.to_thread(run, "replay", a, "--all")
    assert code == 2
    code, output = await asyncio.to_thread(run, "replay", "--error", "550")
    assert code == 0 and "replayed 1 job(s)" in output
    job = await api.runtime.services.jobs.get(b)
    assert job is not None and job.state is JobState.QUEUED
    code, output = await asyncio.to_thread(run, "discard", "--all")
    assert code == 0 and "discarded 1 job(s)" in output
    assert await api.runtime.services.jobs.get(a) is None
