"""HTTP tests of the reference backend: every status code and header the
API side answers, and the settings side's SQLSTATE mapping, against app.py
as a process and the cluster tests/run.sh made."""
import math
import unittest
import uuid

import psycopg

from . import harness
from .harness import ADAM, OLIVIA, UMA, App, forged, org_of, wait_for

app = None


def setUpModule():
    global app
    app = App(**harness.BEHIND_PROXY)
    unittest.addModuleCleanup(app.stop)


class Case(unittest.TestCase):
    """Creates keys through the settings side; after each test, checks that
    none of the tokens it saw reached the app's log."""

    def setUp(self):
        self.tokens = []

    def tearDown(self):
        log = app.log()
        for token in self.tokens:
            self.assertNotIn(token[18:], log, "a token's secret is in the app's log")

    def create(self, user=OLIVIA, org=None, **fields):
        resp = app.request("POST", f"/settings/orgs/{org or org_of(app, user)}/keys",
                           {"label": "test key", **fields}, user=user)
        self.assertEqual(resp.status, 201, resp.json)
        self.tokens.append(resp.json["token"])
        return resp.json

    def settings(self, method, path, body=None, user=OLIVIA, status=200, **kwargs):
        resp = app.request(method, path, body, user=user, **kwargs)
        self.assertEqual(resp.status, status, resp.json)
        return resp.json

    def refused(self, resp, status, code):
        self.assertEqual((resp.status, resp.json["error"]), (status, code), resp.json)
        return resp


class ApiTest(Case):

    def test_valid_key_200(self):
        key = self.create()
        sent = app.api("POST", "/v1/messages", key["token"], body={"to": "+441234", "text": "hi"})
        self.assertEqual(sent.status, 200)
        read = app.api("GET", "/v1/messages", key["token"])
        self.assertEqual(read.status, 200)
        self.assertIn(sent.json, read.json["messages"])
        # no rate limit on the key: no remaining-requests header
        self.assertIsNone(read.headers["X-RateLimit-Remaining"])

    def test_no_bearer_token_401_without_database(self):
        key = self.create()
        before = app.verifies_logged()
        for auth in (None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer   ",
                     f"Token {key['token']}", key["token"]):
            headers = {"Authorization": auth} if auth else {}
            resp = app.request("GET", "/v1/messages", headers=headers)
            self.assertEqual(resp.status, 401, auth)
            # RFC 6750: no error attribute when no token came
            self.assertEqual(resp.headers["WWW-Authenticate"], 'Bearer realm="flowella"')
        self.assertEqual(app.verifies_logged(), before, "a request without a token was verified")
        # the spy sees verify calls: a request with a token is one
        app.api("GET", "/v1/messages", key["token"])
        self.assertEqual(app.verifies_logged(), before + 1)

    def assert_invalid_token(self, token, code):
        resp = self.refused(app.api("POST", "/v1/messages", token, body={}), 401, code)
        self.assertEqual(resp.headers["WWW-Authenticate"],
                         'Bearer realm="flowella", error="invalid_token"')

    def test_malformed_not_found_revoked_expired_401(self):
        key = self.create()
        token = key["token"]
        self.assert_invalid_token("flwl_live_nope", "MALFORMED")
        typo = token[:30] + ("x" if token[30] != "x" else "y") + token[31:]
        self.assert_invalid_token(typo, "MALFORMED")   # the checksum catches it
        self.assert_invalid_token(forged(token), "NOT_FOUND")
        # replaced with no grace: the old key expires at once
        new = self.settings("POST", f"/settings/keys/{key['key_id']}/replace",
                            {"grace_seconds": 0}, status=201)
        self.tokens.append(new["token"])
        self.assert_invalid_token(token, "EXPIRED")
        self.assertEqual(app.api("POST", "/v1/messages", new["token"], body={}).status, 200)
        self.settings("POST", f"/settings/keys/{new['key_id']}/revoke", {})
        self.assert_invalid_token(new["token"], "REVOKED")

    def test_insufficient_scope_403(self):
        key = self.create(scopes=["messages:send"])
        resp = self.refused(app.api("GET", "/v1/messages", key["token"]), 403, "INSUFFICIENT_SCOPE")
        self.assertEqual(resp.headers["WWW-Authenticate"],
                         'Bearer realm="flowella", error="insufficient_scope", scope="messages:read"')
        self.assertEqual(app.api("POST", "/v1/messages", key["token"], body={}).status, 200)

    def test_ip_denied_403_and_the_trusted_proxy_header(self):
        key = self.create()
        self.settings("PUT", f"/settings/keys/{key['key_id']}/policy",
                      {"allowed_ips": ["203.0.113.0/24"], "rate_limit_per_minute": None})

        def status(app_, forwarded_for):
            headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
            resp = app_.api("GET", "/v1/messages", key["token"], headers=headers)
            if resp.status == 403:
                self.assertEqual(resp.json["error"], "IP_DENIED")
                self.assertIsNone(resp.headers["WWW-Authenticate"])
            return resp.status

        # Behind the proxy, the client is the last entry: what the proxy saw.
        self.assertEqual(status(app, "203.0.113.7"), 200)
        self.assertEqual(status(app, "198.51.100.1, 203.0.113.7"), 200)
        self.assertEqual(status(app, "203.0.113.7, 198.51.100.1"), 403)   # forged by the client
        self.assertEqual(status(app, None), 403)   # bypassed the proxy: no address
        # By default the socket peer (127.0.0.1) is the client: the header is ignored.
        direct = App()
        try:
            self.assertEqual(status(direct, "203.0.113.7"), 403)
            self.settings("PUT", f"/settings/keys/{key['key_id']}/policy",
                          {"allowed_ips": ["127.0.0.0/8"], "rate_limit_per_minute": None})
            self.assertEqual(status(direct, "203.0.113.7"), 200)
        finally:
            direct.stop()

    def test_rate_limited_429(self):
        key = self.create()
        self.settings("PUT", f"/settings/keys/{key['key_id']}/policy",
                      {"allowed_ips": None, "rate_limit_per_minute": 2})
        first = app.api("POST", "/v1/messages", key["token"], body={})
        self.assertEqual((first.status, first.headers["X-RateLimit-Remaining"]), (200, "1"))
        # The bucket refills one request per 30 s: keep asking until it is empty.
        for _ in range(10):
            resp = app.api("POST", "/v1/messages", key["token"], body={})
            if resp.status != 200:
                break
        self.refused(resp, 429, "RATE_LIMITED")
        self.assertEqual(resp.headers["X-RateLimit-Remaining"], "0")
        self.assertIn(int(resp.headers["Retry-After"]), range(1, 31))

    def test_usage_reaches_the_settings_side(self):
        key = self.create(scopes=["messages:send"])
        for ip, n in (("203.0.113.7", 3), ("198.51.100.1", 1)):
            for _ in range(n):
                app.api("POST", "/v1/messages", key["token"], body={}, headers={"X-Forwarded-For": ip})
        app.api("GET", "/v1/messages", key["token"], headers={"X-Forwarded-For": "198.51.100.1"})

        def counted():
            usage = self.settings("GET", f"/settings/keys/{key['key_id']}/usage")["usage"]
            sums = {}
            for u in usage:
                k = (u["client_ip"], u["scope"], u["code"])
                sums[k] = sums.get(k, 0) + u["requests"]
            return sums if sum(sums.values()) == 5 else None

        self.assertEqual(wait_for("usage of 5 requests", counted), {
            ("203.0.113.7", "messages:send", "VALID"): 3,
            ("198.51.100.1", "messages:send", "VALID"): 1,
            ("198.51.100.1", "messages:read", "INSUFFICIENT_SCOPE"): 1,
        })


class SettingsTest(Case):

    def test_create_list_scopes_policy(self):
        org = org_of(app, OLIVIA)
        key = self.create(label="n8n production", scopes=["messages:send"])
        self.assertRegex(key["token"], harness.TOKEN)
        self.assertEqual(key["prefix"], key["token"][:18])
        self.settings("PUT", f"/settings/keys/{key['key_id']}/scopes",
                      {"scopes": ["messages:read", "messages:send"]})
        self.settings("PUT", f"/settings/keys/{key['key_id']}/policy",
                      {"allowed_ips": ["203.0.113.0/24"], "rate_limit_per_minute": 600})
        resp = app.request("GET", f"/settings/orgs/{org}/keys", user=OLIVIA)
        self.assertEqual(resp.headers["Cache-Control"], "no-store")
        self.assertNotIn(key["token"][18:], str(resp.json))
        row = next(k for k in resp.json["keys"] if k["key_id"] == key["key_id"])
        self.assertEqual(
            {f: row[f] for f in ("label", "prefix", "scopes", "status", "created_by",
                                 "created_by_name", "last_used_at", "revoked_at",
                                 "allowed_ips", "rate_limit_per_minute")},
            {"label": "n8n production", "prefix": key["prefix"],
             "scopes": ["messages:read", "messages:send"], "status": "active",
             "created_by": OLIVIA, "created_by_name": "Olivia (owner)", "last_used_at": None,
             "revoked_at": None, "allowed_ips": ["203.0.113.0/24"], "rate_limit_per_minute": 600})
        # an admin manages the org's keys too
        adams = self.create(user=ADAM, org=org)
        revoked = self.settings("POST", f"/settings/keys/{adams['key_id']}/revoke", {}, user=ADAM)
        keys = self.settings("GET", f"/settings/orgs/{org}/keys")["keys"]
        row = next(k for k in keys if k["key_id"] == adams["key_id"])
        self.assertEqual((row["status"], row["revoked_at"], row["created_by_name"]),
                         ("revoked", revoked["revoked_at"], "Adam (admin)"))

    def test_replace_keeps_the_old_key_or_gives_it_grace(self):
        key = self.create(scopes=["messages:send"])
        new = self.settings("POST", f"/settings/keys/{key['key_id']}/replace", {}, status=201)
        self.tokens.append(new["token"])
        graced = self.settings("POST", f"/settings/keys/{new['key_id']}/replace",
                               {"grace_seconds": 3600}, status=201)
        self.tokens.append(graced["token"])
        keys = {k["key_id"]: k for k in self.settings(
            "GET", f"/settings/orgs/{org_of(app, OLIVIA)}/keys")["keys"]}
        self.assertIsNone(keys[key["key_id"]]["expires_at"])
        self.assertIsNotNone(keys[new["key_id"]]["expires_at"])
        self.assertEqual(keys[graced["key_id"]]["scopes"], ["messages:send"])
        for k in (key, new, graced):
            self.assertEqual(app.api("POST", "/v1/messages", k["token"], body={}).status, 200)

    def test_actor_ip_and_traceparent_are_audited(self):
        trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        resp = app.request("POST", f"/settings/orgs/{org_of(app, OLIVIA)}/keys", {"label": "traced"},
                           user=OLIVIA, headers={"traceparent": trace,
                                                 "X-Forwarded-For": "192.0.2.44"})
        untraced = app.request("POST", f"/settings/orgs/{org_of(app, OLIVIA)}/keys", {"label": "x"},
                               user=OLIVIA, headers={"traceparent": "not a trace"})
        self.assertEqual((resp.status, untraced.status), (201, 201))   # a bad one is dropped
        self.tokens += [resp.json["token"], untraced.json["token"]]
        with psycopg.connect("") as conn:   # the cluster's superuser
            audited = conn.execute("""
                SELECT key_id::text, actor_user_id::text, host(actor_ip), trace_context
                  FROM flowella.audit_events WHERE action = 'key.created' AND key_id IN (%s, %s)
                 ORDER BY event_id""", (resp.json["key_id"], untraced.json["key_id"])).fetchall()
        self.assertEqual(audited, [(resp.json["key_id"], OLIVIA, "192.0.2.44", trace),
                                   (untraced.json["key_id"], OLIVIA, None, None)])

    def test_403_not_an_owner_or_admin(self):
        acme = org_of(app, OLIVIA)
        for method, body in (("GET", None), ("POST", {"label": "mine"})):
            resp = app.request(method, f"/settings/orgs/{acme}/keys", body, user=UMA)
            self.assertEqual(resp.status, 403, resp.json)
            self.assertEqual(resp.json["sqlstate"], "42501")
            self.assertIn("permission denied", resp.json["error"])
        # no sign-in at all
        self.assertEqual(app.request("GET", f"/settings/orgs/{acme}/keys").status, 401)

    def test_404_unknown_or_another_orgs_key(self):
        globex = self.create(user=UMA, org=org_of(app, UMA))
        for key_id in (str(uuid.uuid4()), globex["key_id"]):
            for method, path, body in (
                    ("POST", "revoke", {}), ("PUT", "scopes", {"scopes": None}),
                    ("PUT", "policy", {"allowed_ips": None, "rate_limit_per_minute": 5}),
                    ("POST", "replace", {}), ("GET", "usage", None)):
                resp = app.request(method, f"/settings/keys/{key_id}/{path}", body, user=OLIVIA)
                self.assertEqual((resp.status, resp.json["sqlstate"]), (404, "42704"), path)
                self.assertEqual(resp.json["error"], "API key not found")
        # Uma's key still works: nothing was changed
        self.assertEqual(app.api("POST", "/v1/messages", globex["token"], body={}).status, 200)

    def test_422_bad_arguments(self):
        org = org_of(app, OLIVIA)
        key = self.create()

        def unprocessable(method, path, body, sqlstate, words):
            resp = app.request(method, path, body, user=OLIVIA)
            self.assertEqual(resp.status, 422, resp.json)
            self.assertEqual(resp.json.get("sqlstate"), sqlstate, resp.json)
            self.assertIn(words, resp.json["error"] + " " + str(resp.json.get("detail")))

        keys = f"/settings/orgs/{org}/keys"
        unprocessable("POST", keys, {"label": " "}, "22023", "label")
        unprocessable("POST", keys, {"label": "x", "scopes": ["channels:manage"]}, "22023",
                      "channels:manage")
        unprocessable("POST", keys, {"label": "x", "expires_at": "2000-01-01T00:00:00Z"},
                      "22023", "expires_at")
        unprocessable("POST", keys, {"label": "x", "expires_at": "someday"}, "22007", "someday")
        unprocessable("POST", keys, {"label": 7}, None, "label")   # checked by the app
        policy = f"/settings/keys/{key['key_id']}/policy"
        unprocessable("PUT", policy, {"allowed_ips": ["999.1.1.1/8"]}, "22P02", "cidr")
        unprocessable("PUT", policy, {"allowed_ips": None, "rate_limit_per_minute": 0},
                      "22023", "rate_limit_per_minute")
        unprocessable("POST", f"/settings/keys/{key['key_id']}/replace",
                      {"grace_seconds": 31 * 86400}, "22023", "grace")
        # a revoked key's scopes cannot change: 55000, 409
        self.settings("POST", f"/settings/keys/{key['key_id']}/revoke", {})
        resp = app.request("PUT", f"/settings/keys/{key['key_id']}/scopes",
                           {"scopes": ["messages:read"]}, user=OLIVIA)
        self.assertEqual((resp.status, resp.json["sqlstate"]), (409, "55000"), resp.json)

    def test_revoke_needs_a_json_body(self):
        key = self.create()
        resp = app.request("POST", f"/settings/keys/{key['key_id']}/revoke", user=OLIVIA)
        self.assertEqual(resp.status, 422)   # what a cross-site HTML form would send
        self.assertEqual(app.api("POST", "/v1/messages", key["token"], body={}).status, 200)


if __name__ == "__main__":
    unittest.main()
