"""The receiver in docs/partners.md, run as written: it verifies, de-duplicates, and refuses forgeries."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from broker.webhooks import signing

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "partners.md"


def _receiver_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    (source,) = [b for b in blocks if b.startswith('"""A webhook receiver for broker')]
    return source


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_guides_receiver_works_as_written(tmp_path):
    script = tmp_path / "receiver.py"
    script.write_text(_receiver_source())
    secret, port = signing.new_secret(), _port()
    process = subprocess.Popen(
        [sys.executable, str(script)],
        env={**os.environ, "BROKER_WEBHOOK_SECRET": secret, "PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/broker-webhooks"
    try:
        body = json.dumps(
            {
                "type": "grant.shared",
                "timestamp": "2026-11-28T00:00:00.000Z",
                "data": {"grant_id": "g", "refresh_token": "pdr-never-printed", "recipient": "p"},
            }
        ).encode()
        headers = signing.headers("evt_guide", int(time.time()), body, [secret])
        deadline = time.monotonic() + 20
        while True:
            try:
                first = httpx.post(url, content=body, headers=headers, timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        again = httpx.post(url, content=body, headers=headers, timeout=5)  # a retry of the same event
        forged = httpx.post(url, content=body.replace(b'"g"', b'"h"'), headers=headers, timeout=5)
        assert (first.status_code, again.status_code, forged.status_code) == (204, 204, 400)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    lines = output.strip().splitlines()
    assert len([line for line in lines if line.startswith("grant.shared evt_guide ")]) == 1  # de-duplicated
    assert "refused: no signature matches" in lines
    assert "pdr-never-printed" not in output
