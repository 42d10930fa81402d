from __future__ import annotations

from tests.api.conftest import Api


async def test_health_and_ready(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    r = await api.client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"store": "ok"}}


async def test_ready_fails_when_store_is_gone(api: Api) -> None:
    async def broken() -> None:
        raise ConnectionError("store unreachable")

    api.runtime.services.ready_checks["store"] = broken
    r = await api.client.get("/readyz")
    assert r.status_code == 503
    assert "store unreachable" in r.json()["checks"]["store"]


async def test_metrics_count_requests_and_queue(api: Api) -> None:
    await api.client.get("/healthz")
    await api.client.post(
        "/v1/events",
        json={"type": "t", "recipients": ["u"], "send_at": "2999-01-01T00:00:00Z"},
        headers=api.auth(),
    )
    text = (await api.client.get("/metrics")).text
    assert 'tidings_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'route="/v1/events",status="202"' in text
    assert 'tidings_queue_jobs{lane="transactional",state="queued"} 1.0' in text
    # the lanes and states with nothing in them are series too: zeros, not gaps
    assert 'tidings_queue_jobs{lane="bulk",state="queued"} 0.0' in text
    assert 'tidings_queue_jobs{lane="bulk",state="running"} 0.0' in text
    assert "tidings_http_request_duration_seconds_bucket" in text


async def test_openapi_documents_the_ingest(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    assert "/v1/events" in spec["paths"]
    assert "409" in spec["paths"]["/v1/events"]["post"]["responses"]
