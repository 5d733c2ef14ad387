"""Screenshots of MLflow UI pages in headless Chromium (driven over the DevTools protocol, so the MLflow Assistant
panel that the UI opens on first load can be closed, and a collapsed description expanded, before the picture is
taken).

    python docs/img/shoot_mlflow.py URL OUT.png [URL OUT.png ...]

Used for docs/img/mlflow_experiment.png and docs/img/mlflow_run.png against a `mlflow server` on 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

CLOSE_ASSISTANT = """
(() => {
  const close = document.querySelector('button[data-component-id="mlflow.assistant.chat_panel.close"]');
  if (close) close.click();
  for (const e of document.querySelectorAll('*')) {  // expand a collapsed run description
    if (e.childElementCount === 0 && e.textContent.trim() === 'Show more') e.click();
  }
  return Boolean(close);
})()
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _shoot(ws_url: str, jobs: list[tuple[str, str]], settle: float) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        ids = iter(range(1, 10_000))

        async def call(method: str, **params):
            i = next(ids)
            await ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
            async for msg in ws:
                data = json.loads(msg.data)
                if data.get("id") == i:
                    return data.get("result", {})

        await call("Page.enable")
        await call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
        for url, out in jobs:
            await call("Page.navigate", url=url)
            await asyncio.sleep(settle)
            for _ in range(2):  # once more after the first click's re-render
                await call("Runtime.evaluate", expression=CLOSE_ASSISTANT)
                await asyncio.sleep(3)
            shot = await call("Page.captureScreenshot", format="png")
            with open(out, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            print(f"wrote {out}")


def main(argv: list[str]) -> None:
    jobs = list(zip(argv[0::2], argv[1::2]))
    port = _port()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                                 f"--remote-debugging-port={port}", "--window-size=1400,1000", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
                    page = next(t for t in targets if t["type"] == "page")
                    break
                except (OSError, StopIteration):
                    if time.time() > deadline:
                        raise
                    time.sleep(0.5)
            asyncio.run(_shoot(page["webSocketDebuggerUrl"], jobs, settle=15))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main(sys.argv[1:])
