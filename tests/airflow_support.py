"""A migrated Airflow metadata DB (SQLite under the test AIRFLOW_HOME from conftest), once per process,
for tests that run small DAGs with `dag.test()`; and a local webhook receiver (http.server in a thread)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self


def migrate_airflow_db() -> None:
    marker = Path(os.environ["AIRFLOW_HOME"]) / ".freshet-migrated"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True,
                       env={**os.environ})
        marker.write_text("ok")


class WebhookReceiver:
    """Records the JSON bodies POSTed to it; answers `status` (200 unless a test changes it)."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append({"json": json.loads(body), "headers": dict(self.headers)})
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self, event: str) -> list[dict]:
        return [item["json"] for item in self.received if item["json"].get("event") == event]
