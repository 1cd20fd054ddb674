"""What the example's tests share: app.py run as a real server process,
HTTP calls to it, polling, and token helpers.

Run inside a cluster made by tests/run.sh (pg_virtualenv exports PGHOST,
PGPORT, PGUSER, PGPASSWORD), after setup.sql.
"""
import http.client
import json
import os
import re
import select
import subprocess
import tempfile
import time
import urllib.parse
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
APP = os.path.join(HERE, "..", "app.py")

# setup.sql's stub users
OLIVIA = "11111111-1111-4111-8111-111111111111"   # owner of Acme Ltd
ADAM = "22222222-2222-4222-8222-222222222222"     # admin of Acme Ltd
UMA = "33333333-3333-4333-8333-333333333333"      # user of Acme, owner of Globex

TOKEN = re.compile(r"flwl_live_[0-9A-Za-z]{46}")
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def wait_for(what, probe, timeout=120):
    """probe() until it returns something true; fail after timeout seconds
    (generous: the machine may be busy)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.2)


def with_checksum(head):
    """A token's 50 first characters and their checksum: CRC-32 as 6 base62
    digits (README "Tokens"), to forge a well-formed token."""
    crc, digits = zlib.crc32(head.encode()), ""
    for _ in range(6):
        crc, digit = divmod(crc, 62)
        digits = BASE62[digit] + digits
    return head + digits


def forged(token):
    """A well-formed token with the same prefix as `token` but another
    secret: apikey_verify answers NOT_FOUND."""
    other = "A" if token[18] != "A" else "B"
    return with_checksum(token[:18] + other + token[19:50])


def org_of(app, user):
    """The one organisation `user` manages (Olivia, Adam: Acme; Uma: Globex)."""
    orgs = app.request("GET", "/settings/me", user=user).json["orgs"]
    assert len(orgs) == 1, orgs
    return orgs[0]["org_id"]


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers = status, headers
        self.json = json.loads(body) if body else None


class App:
    """app.py on a free port of 127.0.0.1, with `env` added to ours; its
    log (stderr) in a file the tests read."""

    def __init__(self, **env):
        self.log_file = tempfile.NamedTemporaryFile(prefix="flowella_example.", suffix=".log")
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", APP, "--port", "0"], env={**os.environ, **env},
            stdout=subprocess.PIPE, stderr=self.log_file, text=True)
        # The app prints its address once it listens ("listening on URL").
        ready, _, _ = select.select([self.proc.stdout], [], [], 120)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"app.py did not start: {line!r}\n{self.log()}")
        url = urllib.parse.urlsplit(line.split()[-1])
        self.host, self.port = url.hostname, url.port
        self.url = f"http://{self.host}:{self.port}"
        wait_for("health", lambda: self.request("GET", "/healthz").status == 200)

    def request(self, method, path, body=None, headers=None, user=None):
        """One HTTP request; `user` signs in (the stub cookie)."""
        headers = dict(headers or {})
        if user:
            headers["Cookie"] = f"stub_user={user}"
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(method, path, data, headers)
            resp = conn.getresponse()
            return Response(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def api(self, method, path, token, **kwargs):
        """An API request with `token` as its bearer token."""
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        return self.request(method, path, headers=headers, **kwargs)

    def log(self):
        with open(self.log_file.name) as f:
            return f.read()

    def verifies_logged(self):
        """How many verify calls the app has made (it logs each one)."""
        return len(re.findall(r"^\S+ \S+ flowella_example verify ", self.log(), re.M))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()


# How the tests run the app: behind one proxy of ours, which writes the
# client's address into X-Forwarded-For.
BEHIND_PROXY = {"TRUSTED_PROXY_HEADER": "X-Forwarded-For", "TRUSTED_PROXY_HOPS": "1"}
