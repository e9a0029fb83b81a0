"""The documentation against the code: docs/configuration.md lists exactly the settings the code reads,
with the code's defaults; every relative link in README.md and docs/*.md resolves (anchors too); every
route of the app is in docs/api.md and every endpoint there is a route; the README stays a short front
door; and no page points outside the repository."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 160
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}

NAME = r"[A-Z][A-Z0-9_]*"
# os.environ.get("NAME"[, "default"]) / os.getenv(...) / env.get("NAME") [or "default"] (gunicorn.conf.py's
# helpers take the environment as `env`); the default is kept only when it is a string literal
ENV_CALL = re.compile(
    r"""(?:\bos\.environ\.get|\bos\.environ\.setdefault|\bos\.getenv|\benv\.get)\(\s*(?P<q>["'])(?P<name>"""
    + NAME
    + r""")(?P=q)(?:\s*,\s*(?P<q2>["'])(?P<default>[^"'\n]*)(?P=q2)\s*\)|\s*\)\s*or\s+(?P<q3>["'])"""
    r"""(?P<or_default>[^"'\n]*)(?P=q3))?"""
)
ENV_INDEX = re.compile(r"""(?:\bos\.environ|\benv)\[\s*(?P<q>["'])(?P<name>""" + NAME + r""")(?P=q)\s*\]""")
# a module constant that names a variable, e.g. sources.MAX_FUTURE_SECONDS_VARIABLE = "MAX_FUTURE_SECONDS";
# its default, when the code has one, is the module's DEFAULT_<NAME>
VARIABLE_CONSTANT = re.compile(
    r"""^(?P<constant>""" + NAME + r"""_VARIABLE)\s*(?::\s*\w+\s*)?=\s*(?P<q>["'])"""
    r"""(?P<name>""" + NAME + r""")(?P=q)""",
    re.MULTILINE,
)

LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
AUTOLINK = re.compile(r"<(?P<target>[a-z][a-z0-9+.-]*://[^>\s]+)>", re.IGNORECASE)
URL = re.compile(r"https?://[^\s)>\]\"'`]+", re.IGNORECASE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(?P<text>.+?)\s*#*\s*$", re.MULTILINE)


# --------------------------------------------------------------------------- (a) the settings


def code_default(value) -> str:
    """A default as the page writes it: "" for unset, a path under the checkout relative to it, else its text."""
    if value is None or value == "":
        return ""
    text = str(value)
    path = Path(text)
    if path.is_absolute():
        try:
            return path.relative_to(ROOT).as_posix()
        except ValueError:
            return text
    return text


def settings_in_code() -> dict[str, set[str | None]]:
    """Every setting the code reads, with each default the code gives it (None: not a literal, not checked).

    `app.DEFAULTS`, plus what the top-level modules read from the environment by name.
    """
    import app

    found: dict[str, set[str | None]] = {name: {code_default(value)} for name, value in app.DEFAULTS.items()}
    for path in sorted(ROOT.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        for match in ENV_CALL.finditer(text):
            default = match["default"] if match["default"] is not None else match["or_default"]
            found.setdefault(match["name"], set()).add(None if default is None else code_default(default))
        for match in ENV_INDEX.finditer(text):
            found.setdefault(match["name"], set()).add(None)
        for match in VARIABLE_CONSTANT.finditer(text):
            module = importlib.import_module(path.stem)
            default = getattr(module, f"DEFAULT_{match['name']}", None)
            found.setdefault(match["name"], set()).add(None if default is None else code_default(default))
    return found


def documented_settings() -> dict[str, str]:
    """{variable: its default cell} from every `| variable | default | meaning |` table of configuration.md."""
    settings: dict[str, str] = {}
    in_table = False
    for line in (DOCS / "configuration.md").read_text(encoding="utf-8").splitlines():
        if not line.lstrip().startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if [cell.lower() for cell in cells[:3]] == ["variable", "default", "meaning"]:
            in_table = True
            continue
        if not in_table or not cells[0].strip("-: "):
            continue
        name = re.fullmatch(rf"`({NAME})`", cells[0])
        assert name, f"configuration.md: a settings row names one variable in backticks, not {cells[0]!r}"
        assert name[1] not in settings, f"configuration.md lists {name[1]} twice"
        settings[name[1]] = cells[1]
    return settings


def documented_default(cell: str) -> str:
    """The default a table cell gives: "" for `unset ...`, else its first code span."""
    if cell.lower().startswith("unset"):
        return ""
    value = re.match(r"`([^`]*)`", cell)
    assert value, f"configuration.md: a default is `value` or unset, not {cell!r}"
    return value[1]


def test_the_settings_scan_finds_what_the_code_reads():
    """The scan itself: settings read in each way the code reads them, with literal defaults."""
    found = settings_in_code()
    assert "MONGO_URI" in found and "CHUNK_STORES" in found  # app.DEFAULTS
    assert "127.0.0.1" in found["HOST"]  # os.environ.get("HOST", "127.0.0.1") and env.get('HOST') or '127.0.0.1'
    assert "BIND" in found and "WEB_CONCURRENCY" in found  # gunicorn.conf.py
    assert found["MAX_FUTURE_SECONDS"] == {"86400"}  # sources.MAX_FUTURE_SECONDS_VARIABLE, DEFAULT_MAX_FUTURE_SECONDS


def test_configuration_lists_exactly_the_settings_the_code_reads():
    in_code, on_page = settings_in_code(), documented_settings()
    assert sorted(set(in_code) - set(on_page)) == [], "read by the code but missing from docs/configuration.md"
    assert sorted(set(on_page) - set(in_code)) == [], "in docs/configuration.md but read nowhere in the code"


def test_configuration_gives_the_code_defaults():
    in_code, on_page = settings_in_code(), documented_settings()
    wrong = {}
    for name, defaults in in_code.items():
        if name not in on_page:
            continue
        written = documented_default(on_page[name]).rstrip("/")
        for default in defaults - {None}:
            if written != default.rstrip("/"):
                wrong[name] = (on_page[name], default or "unset")
    assert wrong == {}, "docs/configuration.md's default (left) differs from the code's (right)"


# --------------------------------------------------------------------------- (b) links


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor a heading gets (as GitHub makes it): lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(match["text"]) for match in HEADING.finditer(text)}


def links(page: Path) -> list[str]:
    text = prose(page.read_text(encoding="utf-8"))
    return [match["target"] for pattern in (LINK, AUTOLINK) for match in pattern.finditer(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_a_file_in_the_repository(page):
    broken = []
    for target in links(page):
        parts = urlsplit(target)
        if parts.scheme or parts.netloc:
            continue  # an address: test_no_page_points_outside_the_repository looks at those
        path, fragment = unquote(parts.path), unquote(parts.fragment)
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading #{fragment} in {resolved.relative_to(ROOT)}")
    assert broken == []


def test_the_docs_index_and_the_readme_link_every_page():
    pages = {page.name for page in DOCS.glob("*.md")}
    for linking in (README, DOCS / "index.md"):
        linked = {Path(urlsplit(target).path).name for target in links(linking)}
        assert sorted(pages - linked - {linking.name}) == [], f"{linking.relative_to(ROOT)} does not link these"


# --------------------------------------------------------------------------- (c) the API page


@pytest.fixture(scope="module")
def docs_app(tmp_path_factory):
    """The app on a scratch SQLite file seeded from the tiny data set (only its routes are looked at)."""
    from app import create_app
    from tests.conftest import write_data_dir

    folder = tmp_path_factory.mktemp("docs")
    application = create_app(
        {
            "MONGO_URI": "",
            "EMBEDDED_DB": str(folder / "db.sqlite3"),
            "DATA_DIR": str(write_data_dir(folder / "data")),
            "REPORTS_DIR": str(folder / "reports"),
            "TESTING": True,
        }
    )
    yield application
    application.extensions["reports"].shutdown(wait=True)


def routes(app) -> set[tuple[str, str]]:
    """(method, rule) of every route but the static files."""
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def test_every_route_is_in_the_api_page(docs_app):
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    missing = sorted(
        f"{method} {rule}"
        for method, rule in routes(docs_app)
        if not re.search(rf"\b{method} {re.escape(rule)}(?![\w/<])", text)
    )
    assert missing == [], "routes of the app that docs/api.md does not name"


def test_every_endpoint_of_the_api_page_is_a_route(docs_app):
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    headed = set(re.findall(r"^##+ `(GET|POST|PUT|PATCH|DELETE) (/[^`?\s]*)", text, re.MULTILINE))
    assert headed, "docs/api.md has a `## `METHOD /path`` heading per endpoint"
    assert sorted(headed - routes(docs_app)) == [], "docs/api.md documents endpoints the app does not have"


# --------------------------------------------------------------------------- (d) and (e)


def test_the_readme_is_a_short_front_door():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move the detail to a page under docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_no_page_points_outside_the_repository(page):
    outside = [
        url for url in URL.findall(page.read_text(encoding="utf-8")) if urlsplit(url).hostname not in LOCAL_HOSTS
    ]
    assert outside == [], "only http://localhost and http://127.0.0.1 examples; link pages in the repository"


def test_every_test_named_in_the_guarantees_exists():
    """docs/guarantees.md names the test behind each promise: each must be a test function of that file."""
    text = (ROOT / "docs" / "guarantees.md").read_text()
    named = re.findall(r"`(test_\w+\.py)(?:::(\w+))?`", text)
    assert len(named) > 30
    missing = [
        f"{file}::{name}"
        for file, name in named
        if not (ROOT / "tests" / file).is_file()
        or (name and not re.search(rf"^def {name}\(", (ROOT / "tests" / file).read_text(), re.M))
    ]
    assert missing == []
