"""aeanomaly.review.templates: the review app's Jinja templates and scripts (kept as strings): they compile,
extend the base page, load scripts only from the app (the CSP allows no inline script), link nothing
outside, and escape what users type."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from aeanomaly.review.templates import SCRIPTS, TEMPLATES

jinja2 = pytest.importorskip("jinja2")

PAGES = ("worklist.html", "viewer.html", "error.html")


def _env():
    return jinja2.Environment(loader=jinja2.DictLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined)


def test_the_template_and_script_tables():
    assert set(TEMPLATES) == {"base.html", "worklist.html", "viewer.html", "error.html", "report.html"}
    assert set(SCRIPTS) == {"viewer.js", "progress.js", "worklist.js"}
    env = _env()
    for name in TEMPLATES:
        env.get_template(name)  # compiles
    for name in PAGES:
        assert TEMPLATES[name].startswith('{% extends "base.html" %}'), name
    assert TEMPLATES["report.html"].startswith("<!doctype html>")  # a download: standalone


def test_scripts_are_files_of_the_app_and_nothing_is_inline():
    referenced = set()
    for name, text in TEMPLATES.items():
        for tag in re.findall(r"<script\b[^>]*>", text):
            m = re.search(r"""src="\{\{ url_for\('script', name='([^']+)'\) \}\}\"""", tag)
            if m:
                referenced.add(m.group(1))
            else:  # data islands only, never code
                assert 'type="application/json"' in tag, (name, tag)
        assert not re.search(r"<[a-z][^>]*\son[a-z]+=", text), name  # no inline event handlers either
    assert referenced == set(SCRIPTS)
    for name, text in {**TEMPLATES, **SCRIPTS}.items():
        assert "http://" not in text and "https://" not in text, name  # works offline, nothing leaks out


def test_every_form_that_posts_carries_the_csrf_token():
    for name, text in TEMPLATES.items():
        for form in re.findall(r"<form\b.*?</form>", text, flags=re.S):
            if 'method="post"' in form:
                assert 'name="csrf_token" value="{{ csrf_token() }}"' in form, (name, form[:80])
    assert '<meta name="csrf-token" content="{{ csrf_token() }}">' in TEMPLATES["base.html"]


def _page_globals(**kw):
    g = dict(csrf_token=lambda: "tok", url_for=lambda endpoint, **a: f"/{endpoint}", request=SimpleNamespace(path="/"),
             reviewer="", bundle_name="tiny", fmt=lambda v, d=3: "" if v is None else f"{v:.{d}g}", max_upload_mb=512)
    g.update(kw)
    return g


def test_error_and_worklist_pages_escape_what_users_control():
    env = _env()
    html = env.get_template("error.html").render(code=400, title="Bad <request>", message="<img src=x>",
                                                 **_page_globals())
    assert "&lt;img src=x&gt;" in html and "<img src=x>" not in html and "Bad &lt;request&gt;" in html
    scans = [dict(id=1, name="<script>x</script>.nii", scan_score=0.5, label="abnormal", p_value=0.01, n_lesions=2,
                  status="done", error=None, verdict="confirm", reviewer="<b>dr</b>", reviewed_at="2024")]
    html = env.get_template("worklist.html").render(scans=scans, pending=False, **_page_globals())
    assert "&lt;script&gt;x&lt;/script&gt;.nii" in html and "&lt;b&gt;dr&lt;/b&gt;" in html
    assert "Worklist (1)" in html and "<script src" not in html  # nothing pending: no reload script
    assert '<script src="/script">' in env.get_template("worklist.html").render(scans=[], pending=True,
                                                                                 **_page_globals())


def test_viewer_page_states():
    env = _env()
    t = env.get_template("viewer.html")
    scan = dict(id=3, name="s.nii", status="error", error="no body <found>")
    html = t.render(scan=scan, **_page_globals())
    assert "Could not score this scan: no body &lt;found&gt;" in html and "<script src" not in html
    html = t.render(scan={**scan, "status": "scoring"}, **_page_globals())
    assert 'id="progress"' in html and html.count("<script src") == 1


def test_the_app_header_escapes_the_reviewer_name():
    flask = pytest.importorskip("flask")
    app = flask.Flask("templates-test")
    app.jinja_loader = jinja2.DictLoader(TEMPLATES)  # as aeanomaly.review.app.create_app configures it
    for endpoint in ("worklist", "set_reviewer", "upload", "script"):
        app.add_url_rule(f"/{endpoint}", endpoint, lambda: "")
    with app.test_request_context("/"):
        html = flask.render_template("error.html", code=400, title="t", message="m",
                                     **_page_globals(reviewer='"><b>mallory</b>', bundle_name="<i>b</i>",
                                                     url_for=flask.url_for))
    assert "<b>mallory</b>" not in html and "&lt;b&gt;mallory" in html
    assert "<i>b</i>" not in html
