"""A local stand-in for a Slack incoming webhook, used by `trustlog up` when no real webhook
is configured: it answers like Slack and appends every accepted message to
``<state>/logs/slack.jsonl`` so ops can see exactly what would have been posted."""

from __future__ import annotations

import asyncio
import os

import orjson
from aiohttp import web

from trustlog.settings import default_state_dir


def main() -> None:
    port = int(os.environ.get("TRUSTLOG_DEVSLACK_PORT", "8099"))
    out = default_state_dir() / "logs" / "slack.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)

    async def handle(request: web.Request) -> web.Response:
        try:
            payload = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.Response(status=400, text="invalid_payload")
        if not isinstance(payload, dict) or not (payload.get("text") or payload.get("blocks")):
            return web.Response(status=400, text="no_text")
        with out.open("ab") as f:
            f.write(orjson.dumps({"path": request.path, "payload": payload}) + b"\n")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    asyncio.run(_serve(app, port))


async def _serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    main()
