from __future__ import annotations

from litestar import Router, get

from broker.http.deps import RuntimeDep


@get("/.well-known/oauth-authorization-server", sync_to_thread=False)
def metadata(runtime: RuntimeDep) -> dict[str, object]:
    return {"issuer": runtime.settings.issuer}


router = Router(path="/", route_handlers=[])
