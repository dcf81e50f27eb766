"""The documentation against the code: a README card that is generated, links that lead
somewhere, set-up commands that CI really runs, and a format specification whose section
numbers and key tables are the ones the code cites and implements."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
SPEC = ROOT / "docs" / "checkpoint-formats.md"

APP_COMMAND = "pip install -e '.[app]' && streamlit run app.py"
TEST_COMMAND = "pip install -e '.[test]' && python -m pytest -q -ra"


def _without_code(text: str) -> str:
    """Markdown with fenced blocks and inline code removed (links inside them are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section, up to the next ``## `` (a ``# `` in a bash block is a comment)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"README has no '## {heading}' section"
    return match.group(1)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, markup and punctuation dropped, spaces -> '-'."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            slug = _slug(match.group(1))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(path: Path) -> list[str]:
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", _without_code(path.read_text()))


# ---- the model card ----------------------------------------------------------------------------

def test_readme_card_is_the_generated_card():
    from danet.weights import default_card

    match = re.search(r"<!-- card:start -->\n(.*?)\n<!-- card:end -->", README.read_text(), flags=re.S)
    assert match, "README lacks the <!-- card:start --> ... <!-- card:end --> block"
    assert match.group(1).strip() == default_card().markdown().strip(), \
        "README's card differs from `python -m danet.weights`: paste that command's output between the markers"


# ---- links ------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path):
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):          # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    assert not broken, f"{page.name}: broken links: {broken}"


def test_the_link_checker_sees_a_broken_link(tmp_path: Path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# Title\n\n## A `code` heading: yes\n")
    page.write_text("[ok](there.md#a-code-heading-yes) [bad](missing.md) [code](`x`) `[no](nowhere.md)`")
    assert _links(page) == ["there.md#a-code-heading-yes", "missing.md"]
    assert "a-code-heading-yes" in _anchors(tmp_path / "there.md")


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _links(README)}
    unlinked = [p.name for p in DOCS if p.resolve() not in linked]
    assert not unlinked, f"README does not link {unlinked}"


# ---- set-up commands ---------------------------------------------------------------------------

def test_readme_has_exactly_the_two_setup_commands():
    setup = _section(README.read_text(), "Set up")
    blocks = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert len(blocks) == 1, "the Set up section should hold one bash block"
    commands = [line.strip() for line in blocks[0].splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands == [APP_COMMAND, TEST_COMMAND], f"Set up should be exactly these two commands, found {commands}"
    assert 'python -m pytest -m "not slow" -q' in setup, "the fast lane belongs next to the full test command"


CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"


def test_the_cpu_route_is_the_two_setup_commands_with_the_cpu_index():
    """The CPU route stays in step with Set up: the same two commands, PyTorch's CPU wheel index
    added to each install, and what each route costs is stated."""
    section = _section(README.read_text(), "CPU only: without CUDA's libraries")
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the CPU section should hold one bash block"
    commands = [line.strip() for line in blocks[0].splitlines() if line.strip() and not line.lstrip().startswith("#")]
    expected = [command.replace(" && ", f" {CPU_INDEX} && ", 1) for command in (APP_COMMAND, TEST_COMMAND)]
    assert commands == expected, f"the CPU route should be {expected}, found {commands}"
    assert "| default (PyPI's CUDA build) |" in section and "| CPU index |" in section, "say what each route costs"


def test_setup_says_the_app_listens_on_every_interface():
    setup = _section(README.read_text(), "Set up")
    assert "every network interface" in setup and "--server.address 127.0.0.1" in setup


def _ci_commands() -> tuple[list[str], list[str]]:
    """.ci/run's pip-install and pytest command lines, as argument lists."""
    installs, tests = [], []
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words[:2] == ["python", "-m"] and words[2:4] == ["pip", "install"]:
            installs.append(words)
        elif words[:3] == ["python", "-m", "pytest"]:
            tests.append(words)
    return installs, tests


def test_ci_runs_the_readme_test_command():
    installs, tests = _ci_commands()
    assert len(tests) == 1, f".ci/run should run pytest once, found {tests}"
    install_part, test_part = (shlex.split(part) for part in TEST_COMMAND.split(" && "))
    assert tests[0] == test_part, f".ci/run runs {' '.join(tests[0])!r}, the README says {' '.join(test_part)!r}"
    wanted = [w for w in install_part[2:] if w.startswith(".")]          # the package spec: .[test]
    assert any([w for w in words[4:] if w.startswith(".")] == wanted and "-e" in words for words in installs), \
        f".ci/run does not install {wanted} in editable mode like the README: {installs}"


# ---- the format specification --------------------------------------------------------------

def _spec_sections() -> set[str]:
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", SPEC.read_text(), flags=re.M))


def test_cited_spec_sections_exist():
    cited = {}
    for path in [*ROOT.glob("danet/**/*.py"), *ROOT.glob("tests/*.py"), README, *DOCS]:
        for line in path.read_text().splitlines():
            if "checkpoint-formats" in line or re.search(r"\bdoc §", line):
                for first, last in re.findall(r"§(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?", line):
                    for number in filter(None, (first, last)):
                        cited.setdefault(number, path.relative_to(ROOT).as_posix())
    assert "4" in cited, "danet/checkpoints/layouts.py should cite the head key table, §4"
    missing = {n: where for n, where in cited.items() if n not in _spec_sections()}
    assert not missing, f"cited sections missing from docs/checkpoint-formats.md: {missing}"


def _spec_head_table() -> list[list[str]]:
    text = SPEC.read_text()
    section = text[text.index("## 4. "):]
    section = section[:section.index("\n## ")]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    return rows[1:]                                         # drop the header


def _names(cell: str) -> list[str]:
    """'conv5c.0 / .1' -> ['conv5c.0', 'conv5c.1']; shapes '[1]' and notes '(PAM cls)' dropped."""
    cell = re.sub(r"\s*(\[[^\]]*\]|\([^)]*\))", "", cell).strip()
    if cell in ("–", "-", ""):
        return []
    names = [n.strip() for n in cell.split(" / ")]
    return [names[0]] + [names[0].rsplit(".", 1)[0] + n if n.startswith(".") else n for n in names[1:]]


def test_spec_head_table_is_what_the_layouts_implement():
    from danet.checkpoints.layouts import LAYOUTS_BY_NAME, OUR_HEAD_MODULES

    table = {"official": {}, "mmseg": {}, "tramac": {}}
    for row in _spec_head_table():
        official, mmseg, tramac, ours = (_names(c) for c in row)
        for layout, names in (("official", official), ("mmseg", mmseg), ("tramac", tramac)):
            if ours:
                assert len(names) == len(ours), f"§4 row {row} pairs {names} with {ours}"
                table[layout].update(zip(names, ours))
    for name, documented in table.items():
        assert LAYOUTS_BY_NAME[name].head_map == documented, f"{name}: layouts.py differs from §4"
    assert set(table["official"].values()) == set(OUR_HEAD_MODULES)
    assert LAYOUTS_BY_NAME["blog"].head_map == table["tramac"], "§8: the blog head is Tramac's"


# ---- the README's Python example ---------------------------------------------------------------

@pytest.mark.slow
def test_readme_python_example_runs(monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", _section(README.read_text(), "In Python"), flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(ROOT)                                  # the example opens assets/samples/...
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["maps"].shape[0] == 2 and namespace["full"].shape[1:] == namespace["image"].shape[:2]
    assert "upload.pth" in capsys.readouterr().out           # the DanetError branch ran and printed one line


# ---- the module map ---------------------------------------------------------------------------

def test_module_map_lists_every_module_and_only_real_ones():
    """docs/architecture.md names every module of danet/ and danet_app/ and every page app.py runs,
    and no module that is gone."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`([\w/]+(?:\.py|/))`", text))
    pages = re.findall(r"st\.Page\(\s*[\"']([\w/]+\.py)[\"']", (ROOT / "app.py").read_text())
    assert pages, "app.py names no st.Page files"
    unlisted = [page for page in pages if page not in named]
    for package, prefix in (("danet", ""), ("danet_app", "danet_app/")):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT / package).as_posix()
            if path.name in ("__init__.py", "__main__.py") and relative.count("/"):
                continue                                     # a sub-package is listed by its modules or its folder
            full = prefix + relative
            folders = {full.rsplit("/", i)[0] + "/" for i in range(1, full.count("/") + 1)}
            if full not in named and not folders & named:
                unlisted.append(full)
    assert not unlisted, f"docs/architecture.md does not list {unlisted}"
    stale = [n for n in named if n.endswith(".py") and not any((ROOT / base / n).exists() for base in ("", "danet"))]
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"
