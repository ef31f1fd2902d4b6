"""The README and the manual (docs/): the README stays a front page (at most ~250 lines) that links
to every page of the manual, its links resolve (files and anchors; the manual's own links are
checked by `make docs`, MkDocs in strict mode), and every complete plugin configuration shown in
either passes `meshsplit check`. (The Envoy configs they show are started by
tests/test_shipped_configs.py.)"""
import json
import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CLI = ROOT / "target" / "release" / "meshsplit"


def anchors(markdown):
    """The anchors of a page's headings, as GitHub and MkDocs's toc both make them."""
    out, fence = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"^#{1,6} (.*)$", line)):
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower().replace("`", ""))
            out.add(text.replace(" ", "-"))
    return out


def links(markdown):
    return re.findall(r"\]\(([^)\s]+)\)", markdown)


def test_the_readme_is_a_front_page_that_links_every_page_of_the_manual():
    text = README.read_text()
    assert len(text.splitlines()) <= 250, len(text.splitlines())
    linked = {link.split("#")[0] for link in links(text)}
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    assert pages <= linked, pages - linked


def test_the_readme_links_resolve():
    text = README.read_text()
    for link in links(text):
        if link.startswith("http"):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else README
        assert target.exists(), link
        if anchor:
            assert anchor in anchors(target.read_text()), link


def json_blocks():
    """(page, text) of every fenced JSON block of the README and the manual."""
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for block in re.findall(r"```json\n(.*?)```", page.read_text(), re.S):
            yield page.relative_to(ROOT), block


def configurations():
    """(page, JSON) of every fenced JSON block that is a plugin configuration: a whole one, or a
    service alone (checked as the only service of a configuration)."""
    for page, block in json_blocks():
        config = json.loads(block)
        if isinstance(config, dict) and "services" in config:
            yield page, block
        elif isinstance(config, dict) and "upstreams" in config:
            yield page, json.dumps({"services": [config]})


def test_every_json_block_in_the_docs_is_json():
    for page, block in json_blocks():
        try:
            json.loads(block)
        except ValueError as e:
            raise AssertionError(f"{page}: a ```json block that is not JSON ({e}):\n{block}") from e


CONFIGURATIONS = list(configurations())


@pytest.mark.parametrize("page,block", CONFIGURATIONS,
                         ids=[f"{page}:{n}" for n, (page, _) in enumerate(CONFIGURATIONS)])
def test_every_configuration_in_the_docs_passes_check(page, block, tmp_path):
    assert CLI.exists(), "build the CLI first (make cli)"
    path = tmp_path / "config.json"
    path.write_text(block)
    out = subprocess.run([str(CLI), "check", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, (str(page), block, out.stdout, out.stderr)

