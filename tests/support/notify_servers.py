"""The receivers of `defectflow notify` in its tests: a real SMTP server (aiosmtpd) and
an HTTP webhook on 127.0.0.1, each writing what it received as JSON lines to OUT.

usage: notify_servers.py OUT  -> prints "ready SMTP_PORT HTTP_PORT" once both listen.

The webhook answers 503 to its first request (a receiver that is briefly down) and
200 to the rest; only what it answered 200 to is written. Runs until killed.
"""

import json
import socket
import sys
import threading
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

OUT = sys.argv[1]
LOCK = threading.Lock()


def write(record):
    with LOCK, open(OUT, "a") as out:
        out.write(json.dumps(record) + "\n")


class Mail:
    async def handle_DATA(self, server, session, envelope):
        message = message_from_bytes(envelope.content)
        write({
            "channel": "email",
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "subject": message["Subject"],
            "message_id": message["Message-ID"],
            "body": message.get_payload(decode=True).decode(),
        })
        return "250 OK"


class Hook(BaseHTTPRequestHandler):
    requests = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with LOCK:
            Hook.requests += 1
            first = Hook.requests == 1
        if first:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        write({
            "channel": "webhook",
            "path": self.path,
            "idempotency_key": self.headers.get("Idempotency-Key"),
            "body": json.loads(body),
        })
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    smtp_port = free_port()
    controller = Controller(Mail(), hostname="127.0.0.1", port=smtp_port)
    controller.start()
    http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    print(f"ready {smtp_port} {http.server_address[1]}", flush=True)
    http.serve_forever()


if __name__ == "__main__":
    main()
