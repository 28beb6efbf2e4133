from __future__ import annotations


async def test_healthz_answers_with_a_request_id(client):
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert len(response.headers["x-request-id"]) == 16


async def test_readyz_checks_database_migrations_and_keys(client):
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"keyring": "ok", "database": "ok", "migrations": "ok"}


async def test_unknown_route_is_a_json_404_with_request_id(client):
    response = await client.get("/nope")
    assert response.status_code == 404
    body = response.json()
    assert body["error"]["code"] == "not_found"
    assert body["request_id"] == response.headers["x-request-id"]
    assert len(body["request_id"]) == 16


async def test_method_not_allowed_carries_a_real_request_id(client):
    response = await client.get("/oauth/token")
    assert response.status_code == 405
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert len(response.headers["x-request-id"]) == 16


async def test_start_up_freezes_its_objects_out_of_the_garbage_collectors_reach(client):
    # A full collection over a worker's start-up objects stalls every request in flight (~65 ms here).
    import gc  # noqa: PLC0415

    assert gc.get_freeze_count() > 10_000
