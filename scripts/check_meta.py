#!/usr/bin/python3
"""Check META.json against the PGXN Meta Spec 1.0.0, and the versions.

Run with Debian's /usr/bin/python3 (standard library only):

    /usr/bin/python3 scripts/check_meta.py [ROOT]      # ROOT: the source tree
    /usr/bin/python3 scripts/check_meta.py --self-test # the checks catch breakage

Debian 12 has no PGXN META validator (PGXN::Meta::Validator is not
packaged; pgxnclient does not validate), so this is one: every field the
spec defines is checked for presence (the seven required ones), type and
form, unknown keys are refused unless they start with x_ (the spec's
custom keys), and the files that provides names must exist.

Versions, one rule: the control file's default_version is the version.
PGXN wants semantic versions, so META.json's version and
provides.flowella_apikey.version are default_version with ".0" appended
when it has two parts ("1.4" -> "1.4.0"); debian/changelog's top entry
must carry default_version as its upstream version (epoch, Debian revision
and a "+" suffix stripped: "1.4", "1.4-1", "1:1.4-2" and "1.4+1", a
packaging-only release of the native package, all match "1.4").

Prints one "ok"/"not ok" line per check and exits non-zero on any failure.
"""

import json
import os
import re
import shutil
import sys
import tempfile

EXTENSION = "flowella_apikey"

# PGXN Meta Spec 1.0.0
SEMVER = (r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
          r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
          r"(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
          r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?")
RANGE_PART = r"(?:(?:[=!]=|[<>]=?)\s*)?" + SEMVER
RANGE_RE = re.compile(r"^(?:0|%s(?:,\s*%s)*)$" % (RANGE_PART, RANGE_PART))
SEMVER_RE = re.compile("^" + SEMVER + "$")
TERM_RE = re.compile(r"^[^/\\\s\x00-\x1f\x7f]{2,}$")
TAG_RE = re.compile(r"^[^/\\\x00-\x1f\x7f]{2,255}$")
LICENSES = {
    "agpl_3", "apache_1_1", "apache_2_0", "artistic_1", "artistic_2", "bsd",
    "freebsd", "gfdl_1_2", "gfdl_1_3", "gpl_1", "gpl_2", "gpl_3", "lgpl_2_1",
    "lgpl_3_0", "mit", "mozilla_1_0", "mozilla_1_1", "openssl", "perl_5",
    "postgresql", "qpl_1_0", "ssleay", "sun", "zlib", "open_source",
    "restricted", "unrestricted", "unknown",
}
REQUIRED = ["name", "version", "abstract", "maintainer", "license",
            "provides", "meta-spec"]
OPTIONAL = ["description", "generated_by", "tags", "no_index", "prereqs",
            "release_status", "resources"]
PHASES = ["configure", "build", "test", "runtime", "develop"]
RELATIONS = ["requires", "recommends", "suggests", "conflicts"]
URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")


def custom(key):
    return re.match(r"^[xX]_.", key) is not None


def nonempty_str(v):
    return isinstance(v, str) and len(v) >= 1


def path_ok(v):
    return (isinstance(v, str) and len(v) >= 2 and not v.startswith("/")
            and "\\" not in v and ".." not in v.split("/"))


class Checker:
    def __init__(self):
        self.errors = []

    def err(self, where, msg):
        self.errors.append("%s: %s" % (where, msg))

    def keys(self, where, obj, allowed):
        for k in obj:
            if k not in allowed and not custom(k):
                self.err(where, "unknown key %r (custom keys start with x_)" % k)

    def obj(self, where, v, min_props=0):
        if not isinstance(v, dict):
            self.err(where, "must be an object")
            return False
        if len(v) < min_props:
            self.err(where, "must not be empty")
            return False
        return True

    def meta(self, m, root):
        if not self.obj("META.json", m):
            return
        for k in REQUIRED:
            if k not in m:
                self.err("META.json", "missing mandatory field %r" % k)
        self.keys("META.json", m, REQUIRED + OPTIONAL)
        if "name" in m and not (isinstance(m["name"], str) and TERM_RE.match(m["name"])):
            self.err("name", "must be a term (2+ characters, no slash, backslash, space or control)")
        if "version" in m and not (isinstance(m["version"], str) and SEMVER_RE.match(m["version"])):
            self.err("version", "must be a semantic version (X.Y.Z)")
        for k in ("abstract", "description", "generated_by"):
            if k in m and not nonempty_str(m[k]):
                self.err(k, "must be a non-empty string")
        if "maintainer" in m:
            mt = m["maintainer"]
            if not (nonempty_str(mt) or (isinstance(mt, list) and mt
                                         and all(nonempty_str(x) for x in mt))):
                self.err("maintainer", "must be a string or a non-empty list of strings")
        if "license" in m:
            self.license(m["license"])
        if "provides" in m:
            self.provides(m["provides"], root)
        if "meta-spec" in m:
            self.meta_spec(m["meta-spec"])
        if "tags" in m:
            t = m["tags"]
            if not (isinstance(t, list) and t and
                    all(isinstance(x, str) and TAG_RE.match(x) for x in t)):
                self.err("tags", "must be a non-empty list of tags (2-255 characters, no slash, backslash or control)")
        if "release_status" in m and m["release_status"] not in ("stable", "testing", "unstable"):
            self.err("release_status", "must be stable, testing or unstable")
        if "prereqs" in m:
            self.prereqs(m["prereqs"])
        if "resources" in m:
            self.resources(m["resources"])
        if "no_index" in m:
            self.no_index(m["no_index"])

    def license(self, v):
        if isinstance(v, str):
            ok = v in LICENSES
        elif isinstance(v, list):
            ok = bool(v) and all(x in LICENSES for x in v)
        elif isinstance(v, dict):
            ok = bool(v) and all(isinstance(u, str) and URI_RE.match(u) for u in v.values())
        else:
            ok = False
        if not ok:
            self.err("license", "must be a known license name, a list of them, or an object of name -> URI")

    def provides(self, v, root):
        if not self.obj("provides", v, 1):
            return
        for name, ext in v.items():
            where = "provides.%s" % name
            if not TERM_RE.match(name):
                self.err(where, "extension name must be a term")
            if not self.obj(where, ext):
                continue
            self.keys(where, ext, ["file", "version", "abstract", "docfile", "docpath"])
            for k in ("file", "version"):
                if k not in ext:
                    self.err(where, "missing mandatory field %r" % k)
            if "version" in ext and not (isinstance(ext["version"], str) and SEMVER_RE.match(ext["version"])):
                self.err(where + ".version", "must be a semantic version (X.Y.Z)")
            if "abstract" in ext and not nonempty_str(ext["abstract"]):
                self.err(where + ".abstract", "must be a non-empty string")
            for k in ("file", "docfile"):
                if k in ext:
                    if not path_ok(ext[k]):
                        self.err(where + "." + k, "must be a relative Unix path")
                    elif not os.path.isfile(os.path.join(root, ext[k])):
                        self.err(where + "." + k, "%s does not exist" % ext[k])

    def meta_spec(self, v):
        if not self.obj("meta-spec", v):
            return
        self.keys("meta-spec", v, ["version", "url"])
        if not (isinstance(v.get("version"), str) and re.match(r"^1\.0\.\d+$", v["version"])):
            self.err("meta-spec.version", "must be 1.0.x")
        if "url" in v and v["url"] not in ("https://pgxn.org/meta/spec.txt",
                                           "http://pgxn.org/meta/spec.txt"):
            self.err("meta-spec.url", "must be the spec's URL")

    def prereqs(self, v):
        if not self.obj("prereqs", v, 1):
            return
        self.keys("prereqs", v, PHASES)
        for phase in PHASES:
            if phase not in v:
                continue
            where = "prereqs.%s" % phase
            if not self.obj(where, v[phase], 1):
                continue
            self.keys(where, v[phase], RELATIONS)
            for rel in RELATIONS:
                if rel not in v[phase]:
                    continue
                w = "%s.%s" % (where, rel)
                if not self.obj(w, v[phase][rel]):
                    continue
                for name, rng in v[phase][rel].items():
                    if not TERM_RE.match(name):
                        self.err(w, "%r is not a term" % name)
                    if not (rng == 0 or (isinstance(rng, str) and RANGE_RE.match(rng))):
                        self.err(w, "%s: %r is not a version range" % (name, rng))

    def resources(self, v):
        if not self.obj("resources", v, 1):
            return
        self.keys("resources", v, ["homepage", "bugtracker", "repository"])
        if "homepage" in v and not (isinstance(v["homepage"], str) and URI_RE.match(v["homepage"])):
            self.err("resources.homepage", "must be a URI")
        if "bugtracker" in v:
            b = v["bugtracker"]
            if self.obj("resources.bugtracker", b):
                self.keys("resources.bugtracker", b, ["web", "mailto"])
                if "web" not in b and "mailto" not in b:
                    self.err("resources.bugtracker", "needs web or mailto")
                if "web" in b and not URI_RE.match(str(b["web"])):
                    self.err("resources.bugtracker.web", "must be a URI")
                if "mailto" in b and not EMAIL_RE.match(str(b["mailto"])):
                    self.err("resources.bugtracker.mailto", "must be an email address")
        if "repository" in v:
            r = v["repository"]
            if self.obj("resources.repository", r):
                self.keys("resources.repository", r, ["url", "web", "type"])
                if "web" not in r and not ("url" in r and "type" in r):
                    self.err("resources.repository", "needs web, or url and type")
                for k in ("url", "web"):
                    if k in r and not URI_RE.match(str(r[k])):
                        self.err("resources.repository." + k, "must be a URI")
                if "type" in r and not (isinstance(r["type"], str) and r["type"] == r["type"].lower()):
                    self.err("resources.repository.type", "must be a lower-case string")

    def no_index(self, v):
        if not self.obj("no_index", v):
            return
        self.keys("no_index", v, ["file", "directory"])
        if "file" not in v and "directory" not in v:
            self.err("no_index", "needs file or directory")
        for k in ("file", "directory"):
            if k in v:
                items = v[k] if isinstance(v[k], list) else [v[k]]
                if not items or not all(path_ok(x) for x in items):
                    self.err("no_index." + k, "must be a relative path or a list of them")


def default_version(root):
    with open(os.path.join(root, EXTENSION + ".control"), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^\s*default_version\s*=\s*'([^']*)'", line)
            if m:
                return m.group(1)
    raise ValueError("no default_version in %s.control" % EXTENSION)


def pgxn_version(control_version):
    """The rule: "1.4" -> "1.4.0"; a three-part version stays as it is."""
    if re.match(r"^\d+\.\d+$", control_version):
        return control_version + ".0"
    return control_version


def changelog_upstream_version(root):
    with open(os.path.join(root, "debian", "changelog"), encoding="utf-8") as f:
        first = f.readline()
    m = re.match(r"^\S+ \(([^)]+)\) ", first)
    if not m:
        raise ValueError("debian/changelog: no version on the first line")
    version = re.sub(r"^\d+:", "", m.group(1))   # epoch
    version = re.sub(r"-[^-]*$", "", version)     # Debian revision
    return re.sub(r"\+.*$", "", version)          # packaging-only release


def run_checks(root):
    """[(name, [errors])] for every check of the tree at root."""
    results = []
    try:
        control = default_version(root)
    except (OSError, ValueError) as e:
        return [("control file default_version", [str(e)])]

    c = Checker()
    try:
        with open(os.path.join(root, "META.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        c.err("META.json", "cannot be read as JSON: %s" % e)
        meta = None
    if meta is not None:
        c.meta(meta, root)
    results.append(("META.json valid against the PGXN Meta Spec 1.0.0", c.errors))

    errs = []
    if isinstance(meta, dict):
        want = pgxn_version(control)
        if meta.get("name") != EXTENSION:
            errs.append("name is %r, not %r" % (meta.get("name"), EXTENSION))
        if meta.get("version") != want:
            errs.append("version is %r; default_version %r wants %r" % (meta.get("version"), control, want))
        ext = meta.get("provides", {}).get(EXTENSION) if isinstance(meta.get("provides"), dict) else None
        if not isinstance(ext, dict):
            errs.append("provides has no %s" % EXTENSION)
        elif ext.get("version") != want:
            errs.append("provides.%s.version is %r; default_version %r wants %r"
                        % (EXTENSION, ext.get("version"), control, want))
    else:
        errs.append("no META.json to compare")
    results.append(("META.json versions = default_version %s" % control, errs))

    try:
        deb = changelog_upstream_version(root)
        errs = [] if deb == control else [
            "debian/changelog's upstream version is %r, default_version is %r "
            "(add a changelog entry for %s)" % (deb, control, control)]
    except (OSError, ValueError) as e:
        errs = [str(e)]
    results.append(("debian/changelog upstream version = default_version %s" % control, errs))
    return results


def report(results):
    failed = 0
    for name, errs in results:
        if errs:
            failed += 1
            print("not ok - %s" % name)
            for e in errs:
                print("    %s" % e)
        else:
            print("ok - %s" % name)
    return failed


def self_test(root):
    """Break a copy of the tree in each way the checks must catch."""
    def edit_meta(f):
        def apply(d):
            p = os.path.join(d, "META.json")
            with open(p, encoding="utf-8") as fh:
                m = json.load(fh)
            f(m)
            with open(p, "w", encoding="utf-8") as fh:
                json.dump(m, fh)
        return apply

    def edit_file(rel, old, new):
        def apply(d):
            p = os.path.join(d, rel)
            with open(p, encoding="utf-8") as fh:
                text = fh.read()
            assert old in text, (rel, old)
            with open(p, "w", encoding="utf-8") as fh:
                fh.write(text.replace(old, new, 1))
        return apply

    control = default_version(root)
    bumped = "%s.%d" % (control.split(".")[0], int(control.split(".")[1]) + 1)
    cases = [
        ("default_version moves on alone", edit_file(EXTENSION + ".control",
            "default_version = '%s'" % control, "default_version = '%s'" % bumped)),
        ("changelog moves on alone", edit_file("debian/changelog",
            "(%s" % control, "(%s" % bumped)),
        ("META.json version not semver", edit_meta(lambda m: m.update(version=control))),
        ("provides version differs", edit_meta(
            lambda m: m["provides"][EXTENSION].update(version="0.9.0"))),
        ("license missing", edit_meta(lambda m: m.pop("license"))),
        ("unknown license", edit_meta(lambda m: m.update(license="proprietary"))),
        ("unknown key", edit_meta(lambda m: m.update(homepage="x"))),
        ("provides file missing", edit_meta(
            lambda m: m["provides"][EXTENSION].update(file="nope.sql"))),
        ("bad prereq range", edit_meta(
            lambda m: m["prereqs"]["runtime"]["requires"].update(PostgreSQL="13"))),
        ("bad meta-spec", edit_meta(lambda m: m["meta-spec"].update(version="2.0.0"))),
        ("tags not a list", edit_meta(lambda m: m.update(tags="api"))),
        ("META.json not JSON", edit_file("META.json", "{", "")),
    ]
    failed = 0
    # the untouched copy must pass, or every case below is caught for nothing
    for name, breakage in [(None, lambda d: None)] + cases:
        with tempfile.TemporaryDirectory() as d:
            for rel in ("META.json", EXTENSION + ".control", "debian/changelog", "README.md"):
                os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
                shutil.copy(os.path.join(root, rel), os.path.join(d, rel))
            breakage(d)
            caught = any(errs for _, errs in run_checks(d))
        if name is None:
            ok, name = not caught, "the untouched copy passes"
        else:
            ok, name = caught, "caught: " + name
        print("%s - %s" % ("ok" if ok else "not ok", name))
        failed += 0 if ok else 1
    return failed


def main(argv):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if argv[1:2] == ["--self-test"]:
        return 1 if self_test(here) else 0
    root = argv[1] if len(argv) > 1 else here
    return 1 if report(run_checks(root)) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
