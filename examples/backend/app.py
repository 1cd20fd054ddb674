#!/usr/bin/python3
"""Reference backend for flowella_apikey: how a SaaS backend uses it.

Two sides, each on its own pool of connections as its own login role:

- the API (/v1/...): every request's bearer token is checked by one call of
  flowella.apikey_verify, a prepared statement, as a role granted only
  flowella_apikey_verifier; the answer's code becomes the HTTP status;
- the Settings -> API keys screen (/settings/...): JSON endpoints that, in
  one transaction each, name the signed-in user with flowella.set_actor and
  call one key function, as a role granted only flowella_apikey_manager;
  SQLSTATEs become 403/404/409/422.  The page itself is static/.

Configuration is the environment (libpq's PG* variables for the server):
  FLOWELLA_VERIFIER_CONNINFO  default "user=flowella_example_verifier"
  FLOWELLA_MANAGER_CONNINFO   default "user=flowella_example_manager"
  TRUSTED_PROXY_HEADER        the header your own proxy writes the client's
                              address into (e.g. X-Forwarded-For); unset: the
                              socket peer's address is the client's
  TRUSTED_PROXY_HOPS          how many proxies of yours append to it (1)

Never log a token: this file logs a request's key_id and code, never the
Authorization header.  Tokens travel only in that header (not in URLs,
which access logs keep).
"""
import argparse
import functools
import ipaddress
import logging
import os
import re
import threading
import uuid
from datetime import datetime, timedelta

import psycopg
from psycopg.rows import dict_row
from flask import Flask, abort, g, jsonify, make_response, redirect, request
from flask.json.provider import DefaultJSONProvider
from psycopg_pool import ConnectionPool
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server

log = logging.getLogger("flowella_example")

TRUSTED_PROXY_HEADER = os.environ.get("TRUSTED_PROXY_HEADER") or None
TRUSTED_PROXY_HOPS = int(os.environ.get("TRUSTED_PROXY_HOPS", "1"))

# The verifier's statements are single calls: autocommit, no transaction.
verifier_pool = ConnectionPool(
    os.environ.get("FLOWELLA_VERIFIER_CONNINFO", "user=flowella_example_verifier"),
    min_size=1, max_size=4, kwargs={"autocommit": True}, open=False)
# The manager's transactions are explicit (conn.transaction() below).
manager_pool = ConnectionPool(
    os.environ.get("FLOWELLA_MANAGER_CONNINFO", "user=flowella_example_manager"),
    min_size=1, max_size=4, kwargs={"autocommit": True}, open=False)


class JSONProvider(DefaultJSONProvider):
    """JSON for what psycopg returns: ISO 8601 times (Flask's default is
    RFC 822, without fractions), str() of uuid, inet and cidr values."""

    @staticmethod
    def default(o):
        if isinstance(o, datetime):
            return o.isoformat()
        return str(o)


app = Flask(__name__, static_folder="static")
app.json = JSONProvider(app)


def client_ip():
    """The end client's address, passed to verify and set_actor.

    By default the socket peer.  Behind proxies of yours, the address the
    nearest of them wrote: each proxy appends the address it received from
    to X-Forwarded-For, so with N proxies the client is the N-th entry from
    the right.  Entries further left came from the client and prove nothing.
    A header missing or too short means the request bypassed the proxies:
    no address (NULL), which a key with an allowlist refuses (IP_DENIED).
    """
    addr = request.remote_addr
    if TRUSTED_PROXY_HEADER:
        entries = [e.strip() for e in
                   request.headers.get(TRUSTED_PROXY_HEADER, "").split(",")]
        entries = [e for e in entries if e]
        addr = entries[-TRUSTED_PROXY_HOPS] if len(entries) >= TRUSTED_PROXY_HOPS else None
    try:
        return ipaddress.ip_address(addr) if addr else None
    except ValueError:
        return None


# ---- The API side: one verify per request ----------------------------------

VERIFY_SQL = """SELECT code, key_id, org_id, ratelimit_remaining, retry_after_ms
                  FROM flowella.apikey_verify(%s, %s, %s)"""

# What each refusal of apikey_verify answers (README "Verify codes"):
# status, the RFC 6750 error of WWW-Authenticate (None: no header), text.
REFUSALS = {
    "MALFORMED": (401, "invalid_token", "The API key is not a Flowella key."),
    "NOT_FOUND": (401, "invalid_token", "The API key does not exist."),
    "REVOKED": (401, "invalid_token", "The API key was revoked."),
    "EXPIRED": (401, "invalid_token", "The API key has expired."),
    "INSUFFICIENT_SCOPE": (403, "insufficient_scope", "The API key lacks the scope this endpoint needs."),
    "IP_DENIED": (403, None, "The API key may not be used from this address."),
    "RATE_LIMITED": (429, None, "The API key's rate limit is used up; retry later."),
}
REMAINING_HEADER = "X-RateLimit-Remaining"


def bearer_token():
    """The token of an "Authorization: Bearer <token>" header, else None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def refuse(status, code, message, www_error=None, scope=None):
    resp = jsonify(error=code, message=message)
    resp.status_code = status
    if status == 401 or www_error:
        # RFC 6750 section 3: no error attribute when no token was sent.
        challenge = 'Bearer realm="flowella"'
        if www_error:
            challenge += f', error="{www_error}"'
        if scope:
            challenge += f', scope="{scope}"'
        resp.headers["WWW-Authenticate"] = challenge
    return resp


def require_key(scope):
    """Guard an API endpoint: verify the bearer token for `scope` once, and
    answer for the key unless it is VALID.  The view sees g.org_id."""
    def decorate(view):
        @functools.wraps(view)
        def guarded(*args, **kwargs):
            token = bearer_token()
            if token is None:   # nothing to verify: no database call
                return refuse(401, "unauthorized", "Send the API key as a bearer token.")
            with verifier_pool.connection() as conn:
                # prepare=True: parsed and planned once per pooled connection.
                code, key_id, org_id, remaining, retry_ms = conn.execute(
                    VERIFY_SQL, (token, scope, client_ip()), prepare=True).fetchone()
            log.info("verify %s %s: %s key %s", request.method, request.path, code, key_id)
            if code == "VALID":
                g.org_id = org_id
                resp = make_response(view(*args, **kwargs))
            else:
                status, www_error, message = REFUSALS[code]
                resp = refuse(status, code, message, www_error,
                              scope if code == "INSUFFICIENT_SCOPE" else None)
                if code == "RATE_LIMITED":
                    resp.headers["Retry-After"] = str(-(-retry_ms // 1000))  # ms, rounded up
            if remaining is not None:   # NULL for a key without a rate limit
                resp.headers[REMAINING_HEADER] = str(remaining)
            return resp
        return guarded
    return decorate


# The product's own data, a stand-in: messages kept in memory per org.
messages = {}
messages_lock = threading.Lock()


@app.post("/v1/messages")
@require_key("messages:send")
def send_message():
    body = request.get_json(silent=True) or {}
    message = {"id": str(uuid.uuid4()), "to": body.get("to"), "text": body.get("text")}
    with messages_lock:
        messages.setdefault(g.org_id, []).append(message)
    return jsonify(message)


@app.get("/v1/messages")
@require_key("messages:read")
def list_messages():
    with messages_lock:
        return jsonify(messages=list(messages.get(g.org_id, [])))


# ---- The Settings -> API keys side: set_actor, then one call ---------------

# STUB sign-in, so that the example is about keys, not logins: a cookie
# names the user, and anybody may set it.  Replace signed_in_user() with
# your session.  The names stand in for your users table.
STUB_USERS = {
    uuid.UUID("11111111-1111-4111-8111-111111111111"): "Olivia (owner)",
    uuid.UUID("22222222-2222-4222-8222-222222222222"): "Adam (admin)",
    uuid.UUID("33333333-3333-4333-8333-333333333333"): "Uma (user)",
}
STUB_COOKIE = "stub_user"
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

# SQLSTATEs of the key functions (README "Errors") -> HTTP status.  Other
# data exceptions (class 22: a bad inet, timestamp or interval) are 422 too.
SQLSTATE_STATUS = {
    "42501": 403,   # not an owner or admin of the organisation
    "42704": 404,   # no such key, or not one of the actor's organisations'
    "22023": 422,   # a bad argument, named in the message
    "23514": 422,   # a row the table's CHECK refuses
    "55000": 409,   # the key is revoked
}


def signed_in_user():
    try:
        return uuid.UUID(request.cookies.get(STUB_COOKIE, ""))
    except ValueError:
        abort(make_response(jsonify(error="not signed in"), 401))


@app.get("/stub/sign-in")
def stub_sign_in():
    """STUB: /stub/sign-in?user=<uuid> signs that user in."""
    resp = redirect("/settings/api-keys")
    # SameSite=Strict: no other site's page can make the browser send it.
    resp.set_cookie(STUB_COOKIE, request.args.get("user", ""), httponly=True, samesite="Strict")
    return resp


def as_actor(work):
    """Run work(conn) in one transaction whose actor is the signed-in user,
    with the request's client address and W3C trace context (audited with
    every change; an invalid traceparent is dropped, not an error)."""
    user = signed_in_user()
    trace = request.headers.get("traceparent", "")
    with manager_pool.connection() as conn, conn.transaction():
        conn.execute("SELECT flowella.set_actor(%s, %s, %s)",
                     (user, client_ip(), trace if TRACEPARENT.fullmatch(trace) else None))
        return work(conn)


def rows(conn, sql, params):
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(sql, params).fetchall()


def json_args(**expected):
    """The request's JSON object, each named field checked against its
    type (a tuple of types); missing fields are None."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(make_response(jsonify(error="the body must be a JSON object"), 422))
    for name, types in expected.items():
        value = body.get(name)
        ok = value is None or (isinstance(value, types) and not isinstance(value, bool))
        if ok and isinstance(value, list):
            ok = all(isinstance(v, str) for v in value)
        if not ok:
            abort(make_response(jsonify(error=f'"{name}" has the wrong type'), 422))
    return [body.get(name) for name in expected]


@app.errorhandler(psycopg.Error)
def database_error(e):
    state = e.sqlstate or ""
    status = SQLSTATE_STATUS.get(state, 422 if state.startswith("22") else 500)
    if status == 500:
        log.error("database error %s: %s", state, e.diag.message_primary)
        return jsonify(error="internal error"), 500
    # The extension's messages never hold a token (README "Log redaction").
    return jsonify(error=e.diag.message_primary, detail=e.diag.message_detail,
                   sqlstate=state), status


@app.after_request
def no_store(resp):
    if request.path.startswith("/settings/"):
        resp.headers["Cache-Control"] = "no-store"   # a new key's token, a list
    return resp


@app.get("/settings/me")
def me():
    """The signed-in user and the organisations whose keys they manage
    (row-level security shows the manager role only those)."""
    user = signed_in_user()
    orgs = as_actor(lambda conn: rows(conn, """
        SELECT o.org_id, o.name, o.plan, p.scopes AS plan_scopes
          FROM flowella.orgs o JOIN flowella.plans p ON p.plan = o.plan
         ORDER BY o.name""", ()))
    return jsonify(user_id=user, name=STUB_USERS.get(user, str(user)), orgs=orgs)


@app.get("/settings/orgs/<uuid:org_id>/keys")
def list_keys(org_id):
    keys = as_actor(lambda conn: rows(
        conn, "SELECT * FROM flowella.apikey_list(%s)", (org_id,)))
    for key in keys:
        key["created_by_name"] = STUB_USERS.get(key["created_by"], str(key["created_by"]))
    return jsonify(keys=keys)


@app.post("/settings/orgs/<uuid:org_id>/keys")
def create_key(org_id):
    """A new key; the response is the only time its token is seen."""
    label, scopes, mode, expires_at = json_args(
        label=str, scopes=list, mode=str, expires_at=str)
    created = as_actor(lambda conn: rows(conn, """
        SELECT key_id, token, prefix FROM flowella.apikey_create(
            %s, %s, %s, coalesce(%s, 'live'), %s::timestamptz)""",
        (org_id, label, scopes, mode, expires_at)))
    return jsonify(created[0]), 201


@app.put("/settings/keys/<uuid:key_id>/scopes")
def set_scopes(key_id):
    scopes, = json_args(scopes=list)   # null: inherit the plan's scopes
    as_actor(lambda conn: conn.execute(
        "SELECT flowella.apikey_set_scopes(%s, %s)", (key_id, scopes)))
    return jsonify(key_id=key_id, scopes=scopes)


@app.put("/settings/keys/<uuid:key_id>/policy")
def set_policy(key_id):
    allowed_ips, limit = json_args(allowed_ips=list, rate_limit_per_minute=int)
    as_actor(lambda conn: conn.execute(
        "SELECT flowella.apikey_set_policy(%s, %s::cidr[], %s)", (key_id, allowed_ips, limit)))
    return jsonify(key_id=key_id, allowed_ips=allowed_ips, rate_limit_per_minute=limit)


@app.post("/settings/keys/<uuid:key_id>/replace")
def replace_key(key_id):
    """A new key like the old one; with grace_seconds the old one expires
    then, else it works until revoked."""
    grace, = json_args(grace_seconds=(int, float))
    created = as_actor(lambda conn: rows(
        conn, "SELECT key_id, token, prefix FROM flowella.apikey_replace(%s, %s)",
        (key_id, None if grace is None else timedelta(seconds=grace))))
    return jsonify(created[0]), 201


@app.post("/settings/keys/<uuid:key_id>/revoke")
def revoke_key(key_id):
    json_args()   # a JSON body, so that no plain HTML form can post here
    revoked_at = as_actor(lambda conn: conn.execute(
        "SELECT flowella.apikey_revoke(%s)", (key_id,)).fetchone()[0])
    return jsonify(key_id=key_id, revoked_at=revoked_at)


@app.get("/settings/keys/<uuid:key_id>/usage")
def key_usage(key_id):
    """The key's requests per minute, client address, scope and code, for
    the exposed-key flow: ?since=&until= (ISO 8601), default the last day."""
    usage = as_actor(lambda conn: rows(conn, """
        SELECT * FROM flowella.apikey_usage(%s,
            coalesce(%s::timestamptz, now() - interval '24 hours'),
            coalesce(%s::timestamptz, now()))""",
        (key_id, request.args.get("since"), request.args.get("until"))))
    return jsonify(usage=usage)


# ---- The page and the rest -------------------------------------------------

@app.get("/")
@app.get("/settings/api-keys")
def page():
    resp = app.send_static_file("index.html")
    resp.headers["Content-Security-Policy"] = "default-src 'self'"
    return resp


@app.get("/healthz")
def healthz():
    for pool in (verifier_pool, manager_pool):
        with pool.connection() as conn:
            conn.execute("SELECT 1")
    return jsonify(ok=True)


@app.errorhandler(HTTPException)
def http_error(e):
    return jsonify(error=e.description), e.code


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8471, help="0: any free port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for pool in (verifier_pool, manager_pool):
        pool.open(wait=True, timeout=30)
    # Werkzeug's threaded server keeps the example dependency-free; app is
    # a WSGI application, so production runs it under any WSGI server.
    server = make_server(args.host, args.port, app, threaded=True)
    print(f"listening on http://{args.host}:{server.server_port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
