"""A stand-in for the ECS container agent's task protection endpoint, as documented.

`PUT /task-protection/v1/state` with `{"ProtectionEnabled": bool, "ExpiresInMinutes": n}`
answers `{"protection": {...}}`, or a `failure` / `error` object when told to refuse;
`GET` reads the state. Every PUT is recorded with the time it arrived.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = "/task-protection/v1/state"
TASK_ARN = "arn:aws:ecs:us-east-1:123456789012:task/workers/0123456789abcdef"


@dataclass(frozen=True)
class Call:
    at: float
    enabled: bool
    minutes: int | None


class FakeEcsAgent:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        # None: accept; "failure": TASK_NOT_VALID; "denied": AccessDeniedException;
        # "throttled": ThrottlingException (HTTP 500, as the agent passes it on).
        self.refuse: str | None = None
        self.expires_at: float | None = None
        self._lock = threading.Lock()
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                status, answer = agent.put(self.path, body)
                self._send(status, answer)

            def do_GET(self) -> None:
                self._send(200 if self.path == PATH else 404, agent.state())

            def _send(self, status: int, answer: dict[str, Any]) -> None:
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self._server.server_port}/api/0123456789abcdef"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def put(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not path.endswith(PATH):
            return 404, {"error": {"Code": "NotFound", "Message": path}}
        enabled = body.get("ProtectionEnabled")
        minutes = body.get("ExpiresInMinutes")
        with self._lock:
            self.calls.append(Call(time.time(), bool(enabled), minutes))
            if self.refuse == "failure":
                return 200, {"failure": {"Arn": TASK_ARN, "Detail": None,
                                         "Reason": "TASK_NOT_VALID"}}
            if self.refuse == "denied":
                return 400, {"requestID": "r-1", "error": {
                    "Arn": TASK_ARN, "Code": "AccessDeniedException",
                    "Message": "not authorized to perform: ecs:UpdateTaskProtection"}}
            if self.refuse == "throttled":
                return 500, {"requestID": "r-2", "error": {
                    "Arn": TASK_ARN, "Code": "ThrottlingException", "Message": "Rate exceeded"}}
            if not isinstance(enabled, bool) or (minutes is not None and not 1 <= minutes <= 2880):
                return 400, {"error": {"Code": "InvalidParameterException",
                                       "Message": "bad request"}}
            self.expires_at = time.time() + 60 * (minutes or 120) if enabled else None
        return 200, self.state()

    def state(self) -> dict[str, Any]:
        expires = self.expires_at
        date = (datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                if expires else None)
        return {"protection": {"ExpirationDate": date, "ProtectionEnabled": expires is not None,
                               "TaskArn": TASK_ARN}}

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
