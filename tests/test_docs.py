"""The documentation holds together: every relative link resolves to a file of the
repository and every `#anchor` to a heading of its target, nothing points outside
the repository, every page under docs/ can be reached from docs/README.md, and
README.md stays a front page whose two commands are the ones the project runs.

Fast and offline: it reads files, nothing else. The checks are plain functions,
so that `test_the_checks_catch_what_they_should` can prove on a small made-up
tree that each of them fails when it should.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The README's run command: a virtualenv, chit with the server extra, the dev server.
RUN_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e '.[server]' && .venv/bin/chit serve --dev"
MAX_README_LINES = 200
# The contract used to live outside the repository; nothing may point there.
FORBIDDEN_TEXT = ("DESIGN.md", "../shared", "/work/shared")

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) or ![alt](target), with an optional "title"; text may hold one level of [brackets].
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def documentation_files(root: Path = ROOT) -> list[Path]:
    """The Markdown files this test holds to its rules."""
    files = [root / "README.md", *sorted((root / "docs").rglob("*.md")), root / "policies" / "README.md", root / "deploy" / "README.md"]
    return [path for path in files if path.is_file()]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with code spans blanked out."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
            continue
        if fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) and not line.strip()[len(match.group(1)):].strip():
                fence = None
            continue
        lines.append((number, _CODE_SPAN.sub(lambda m: "code", line)))
    return lines


@dataclass(frozen=True)
class Link:
    source: Path
    line: int
    target: str

    def where(self, root: Path) -> str:
        return f"{self.source.relative_to(root)}:{self.line}: {self.target}"


def links(path: Path) -> list[Link]:
    found = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in _INLINE_LINK.finditer(line):
            found.append(Link(path, number, match.group(1)))
        definition = _REFERENCE_DEFINITION.match(line)
        if definition:
            found.append(Link(path, number, definition.group(1)))
    return found


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, punctuation removed
    except `-` and `_`, each space a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, … as on GitHub."""
    seen: Counter[str] = Counter()
    result = set()
    text = path.read_text(encoding="utf-8")
    for _, line in _heading_lines(text):
        slug = github_slug(line)
        result.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return result


def _heading_lines(text: str) -> list[tuple[int, str]]:
    """ATX headings outside code fences, with their raw text (code spans kept)."""
    raw = text.splitlines()
    headings = []
    for number, _ in prose_lines(text):
        match = _HEADING.match(raw[number - 1])
        if match:
            headings.append((number, match.group(2)))
    return headings


def _resolve(link: Link, root: Path) -> tuple[Path | None, str | None, str | None]:
    """(the linked file or None for the same file, its anchor, a problem)."""
    target, _, anchor = link.target.partition("#")
    if target.startswith("/"):
        return None, None, "an absolute path: link relative to the file instead"
    if not target:
        return link.source, anchor or None, None
    resolved = (link.source.parent / target).resolve()
    if not resolved.is_relative_to(root):
        return None, None, "points outside the repository"
    if not resolved.is_file():
        return None, None, "no such file in the repository"
    return resolved, anchor or None, None


def link_problems(files: list[Path], root: Path = ROOT) -> list[str]:
    problems = []
    for path in files:
        for link in links(path):
            if _SCHEME.match(link.target):
                continue  # https:, mailto:: not this test's business
            if any(text in link.target for text in FORBIDDEN_TEXT):
                problems.append(f"{link.where(root)}: refers to the contract outside the repository")
                continue
            resolved, anchor, problem = _resolve(link, root)
            if problem:
                problems.append(f"{link.where(root)}: {problem}")
            elif anchor is not None:
                if resolved is None or resolved.suffix != ".md":
                    problems.append(f"{link.where(root)}: an anchor into a file that is not Markdown")
                elif anchor not in anchors(resolved):
                    problems.append(f"{link.where(root)}: no heading #{anchor} in {resolved.relative_to(root)}")
    return problems


def forbidden_text_problems(files: list[Path], root: Path = ROOT) -> list[str]:
    problems = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for text in FORBIDDEN_TEXT:
                if text in line:
                    problems.append(f"{path.relative_to(root)}:{number}: mentions {text}")
    return problems


def reachable_from(start: Path, root: Path = ROOT) -> set[Path]:
    """The Markdown files reached from `start` by following relative links."""
    seen, pending = {start.resolve()}, [start.resolve()]
    while pending:
        for link in links(pending.pop()):
            if _SCHEME.match(link.target):
                continue
            resolved, _, problem = _resolve(link, root)
            if problem is None and resolved is not None and resolved.suffix == ".md" and resolved not in seen:
                seen.add(resolved)
                pending.append(resolved)
    return seen


def unreachable_pages(root: Path = ROOT) -> list[str]:
    reached = reachable_from(root / "docs" / "README.md", root)
    return [str(page.relative_to(root)) for page in sorted((root / "docs").rglob("*.md")) if page.resolve() not in reached]


def first_code_block(text: str) -> tuple[list[str], str]:
    """The lines of the first fenced block, and everything before it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if _FENCE.match(line))
    end = next(i for i in range(start + 1, len(lines)) if _FENCE.match(lines[i]))
    return lines[start + 1 : end], "\n".join(lines[:start])


def ci_test_command(root: Path = ROOT) -> str:
    """What CI runs: the command `.ci/run` execs."""
    for line in (root / ".ci" / "run").read_text(encoding="utf-8").splitlines():
        if line.startswith("exec "):
            return line.removeprefix("exec ").strip()
    raise AssertionError(".ci/run execs no command")


# --- the tests ------------------------------------------------------------------------------


def test_relative_links_resolve_and_anchors_name_headings() -> None:
    problems = link_problems(documentation_files())
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_nothing_refers_to_the_contract_outside_the_repository() -> None:
    problems = forbidden_text_problems(documentation_files())
    assert not problems, "\n".join(problems)


def test_code_and_configuration_cite_the_contract_in_the_repository() -> None:
    """Docstrings and comments name docs/reference, not a file beside the repository."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "chit", "tests", "policies", "deploy", "Dockerfile", "pyproject.toml"],
                             capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    files = [ROOT / name for name in tracked if name != "tests/test_docs.py" and name.endswith((".py", ".rego", ".yaml", ".toml", ".md", "Dockerfile"))]
    problems = forbidden_text_problems([f for f in files if f.is_file()])
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_reachable_from_the_index() -> None:
    unreachable = unreachable_pages()
    assert not unreachable, f"not reachable from docs/README.md: {unreachable}"


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; the rest belongs in docs/"


def test_readme_opens_with_the_run_and_test_commands() -> None:
    block, before = first_code_block((ROOT / "README.md").read_text(encoding="utf-8"))
    assert "\n## " not in before, "the two commands come before any section"
    commands = [line for line in block if line.strip() and not line.startswith("#")]
    assert commands == [RUN_COMMAND, ci_test_command()]


def test_the_commands_are_the_ones_the_project_runs() -> None:
    test_command = ci_test_command()
    assert test_command == "./test.sh" and (ROOT / "test.sh").stat().st_mode & 0o111
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    words = shlex.split(RUN_COMMAND)
    assert "'.[server]'" in RUN_COMMAND and "server" in project["optional-dependencies"]
    assert words[-2:] == ["serve", "--dev"] and words[-3] == ".venv/bin/chit" and project["scripts"]["chit"] == "chit.cli:main"
    # The same virtualenv test.sh creates and uses.
    assert "python3 -m venv .venv" in (ROOT / "test.sh").read_text(encoding="utf-8")


def test_github_slugs() -> None:
    assert github_slug("POST /token") == "post-token"
    assert github_slug("Mode `web_identity`") == "mode-web_identity"
    assert github_slug("Letting clouds trust chit's tokens") == "letting-clouds-trust-chits-tokens"
    assert github_slug("`chit agent`: the sidecar") == "chit-agent-the-sidecar"
    assert github_slug("EC2 facts (`aws_iid`)") == "ec2-facts-aws_iid"
    assert github_slug("State, workers and replicas") == "state-workers-and-replicas"
    assert github_slug("See [the API](http-api.md)") == "see-the-api"


def test_the_checks_catch_what_they_should(tmp_path: Path) -> None:
    """Each check, on a made-up repository, fails on what it exists to catch."""
    root = tmp_path / "repo"
    (root / "docs" / "guide").mkdir(parents=True)
    (tmp_path / "outside.md").write_text("# Outside\n")
    (root / "README.md").write_text("# Project\n\n[docs](docs/README.md)\n")
    (root / "docs" / "README.md").write_text(
        "# Index\n\n## Same heading\n\n## Same heading\n\n"
        "[ok](guide/page.md#a-heading) [ok](#same-heading-1) [ok](https://example.org/missing.md)\n"
        "[missing file](guide/nope.md)\n"
        "[missing anchor](guide/page.md#nope)\n"
        "[outside](../../outside.md)\n"
        "[absolute](/docs/README.md)\n"
        "[contract](../DESIGN.md)\n"
        "`[in code](guide/nope.md)`\n\n"
        "```\n[in a fence](guide/nope.md)\n```\n"
    )
    (root / "docs" / "guide" / "page.md").write_text("# Page\n\n## A heading\n\nSee ../shared/notes.\n")
    (root / "docs" / "guide" / "orphan.md").write_text("# Orphan\n")
    files = documentation_files(root)

    problems = link_problems(files, root)
    assert [p.split(": ", 2)[0:2] for p in problems] == [
        ["docs/README.md:8", "guide/nope.md"],
        ["docs/README.md:9", "guide/page.md#nope"],
        ["docs/README.md:10", "../../outside.md"],
        ["docs/README.md:11", "/docs/README.md"],
        ["docs/README.md:12", "../DESIGN.md"],
    ], problems
    assert forbidden_text_problems(files, root) == ["docs/README.md:12: mentions DESIGN.md", "docs/guide/page.md:5: mentions ../shared"]
    assert unreachable_pages(root) == ["docs/guide/orphan.md"]
