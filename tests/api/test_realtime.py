from __future__ import annotations

from tests.api.conftest import Api


async def test_publish_then_history(api: Api) -> None:
    for n in range(3):
        r = await api.client.post(
            "/v1/realtime/publish",
            json={"channel": "chat:room", "data": {"n": n}},
            headers=api.auth(),
        )
        assert r.status_code == 200, r.text
        assert r.json()["offset"] == n + 1
    epoch = r.json()["epoch"]
    h = await api.client.get("/v1/realtime/channels/chat:room/history?limit=2", headers=api.auth())
    body = h.json()
    assert body["offset"] == 3 and body["epoch"] == epoch
    assert [p["data"] for p in body["publications"]] == [{"n": 0}, {"n": 1}]
    since = await api.client.get(
        f"/v1/realtime/channels/chat:room/history?limit=-1&since_offset=1&since_epoch={epoch}",
        headers=api.auth(),
    )
    assert [p["offset"] for p in since.json()["publications"]] == [2, 3]


async def test_publish_is_idempotent_by_key(api: Api) -> None:
    body = {"channel": "chat:idem", "data": "x", "idempotency_key": "k1"}
    a = await api.client.post("/v1/realtime/publish", json=body, headers=api.auth())
    b = await api.client.post("/v1/realtime/publish", json=body, headers=api.auth())
    assert a.json() == b.json()
    h = await api.client.get("/v1/realtime/channels/chat:idem/history?limit=-1", headers=api.auth())
    assert len(h.json()["publications"]) == 1


async def test_broadcast_validates_every_channel_first(api: Api) -> None:
    bad = await api.client.post(
        "/v1/realtime/broadcast",
        json={"channels": ["chat:a", "nowhere:b"], "data": 1},
        headers=api.auth(),
    )
    assert bad.status_code == 422
    h = await api.client.get("/v1/realtime/channels/chat:a/history?limit=-1", headers=api.auth())
    assert h.json()["publications"] == []  # nothing half-done
    ok = await api.client.post(
        "/v1/realtime/broadcast",
        json={"channels": ["chat:a", "chat:b"], "data": 1},
        headers=api.auth(),
    )
    assert [p["channel"] for p in ok.json()] == ["chat:a", "chat:b"]


async def test_presence_and_disconnect_of_no_one(api: Api) -> None:
    p = await api.client.get("/v1/realtime/channels/chat:room/presence", headers=api.auth())
    assert p.json() == []
    s = await api.client.get("/v1/realtime/channels/chat:room/presence_stats", headers=api.auth())
    assert s.json() == {"num_clients": 0, "num_users": 0}
    d = await api.client.post("/v1/realtime/disconnect", json={"user": "ghost"}, headers=api.auth())
    assert d.json() == {"disconnected": 0, "reconnect": False}


async def test_realtime_api_needs_a_key(api: Api) -> None:
    r = await api.client.post("/v1/realtime/publish", json={"channel": "chat:x", "data": 1})
    assert r.status_code == 401


async def test_unknown_namespace_is_422(api: Api) -> None:
    r = await api.client.post(
        "/v1/realtime/publish", json={"channel": "nowhere:x", "data": 1}, headers=api.auth()
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "channel"
