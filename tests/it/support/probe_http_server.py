"""The HTTP server the `http` probe tests talk to (Python's http.server, optionally over TLS).

POST /order answers 200 with {"status": "ok", ...} only when the request carries the header
`X-Probe-Token: s3cret` and a JSON body equal to {"item": "tea", "count": 2}; anything else is
400, so a probe that passes proves it sent both. GET /status answers the JSON in the file given
as --status-file, re-read on every request. GET /moved redirects to /status.

usage: probe_http_server.py PORT --status-file FILE [--cert PEM --key PEM [--client-ca PEM]]
"""

import argparse
import http.server
import json
import ssl

parser = argparse.ArgumentParser()
parser.add_argument("port", type=int)
parser.add_argument("--status-file", required=True)
parser.add_argument("--cert")
parser.add_argument("--key")
parser.add_argument("--client-ca")
args = parser.parse_args()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/status":
            with open(args.status_file, "rb") as f:
                self.answer(200, json.load(f))
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/status")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.answer(404, {"error": "no such path"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path != "/order":
            self.answer(404, {"error": "no such path"})
            return
        if self.headers.get("X-Probe-Token") != "s3cret":
            self.answer(400, {"error": "missing or wrong X-Probe-Token"})
            return
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            self.answer(400, {"error": "not JSON"})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self.answer(400, {"error": "body is not JSON"})
            return
        if body != {"item": "tea", "count": 2}:
            self.answer(400, {"error": "unexpected order", "got": body})
            return
        self.answer(200, {"status": "ok", "order": {"id": 7, "items": ["tea"]}})

    def log_message(self, *_):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
if args.cert:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    if args.client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(args.client_ca)
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
