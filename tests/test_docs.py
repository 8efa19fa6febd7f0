"""Every code block of the documentation runs, and shown output is checked.

For each page ``docs/*.md`` (and ``docs/api/*.md``), the fenced code blocks run in order in
one namespace, in a fresh working directory that is also on ``sys.path``:

``python``
    A block with ``>>>`` prompts is a doctest: its expected output is compared (with
    ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``).  Any other block is executed as it stands.
    A block whose first line is ``# file: NAME`` is also written to ``NAME`` in the
    working directory (a module that a later command or import uses).
``console``
    ``$ command`` lines, each followed by its expected output (if any).  ``gradc plan``
    and ``gradc export`` run in process through :func:`gradc.cli.main` and their output is
    compared.  ``gradc demo`` and ``gradc compare`` take tens of seconds, so their
    arguments and target are checked (the CLI runs with the expensive step replaced), not
    their output.  Install, test and build commands (``pip``, ``python -m pytest``,
    ``mkdocs``, ``python FILE.py``) are checked for form and that the files they name
    exist, but not run.
``text``
    Not code (literal output or notation shown on its own): skipped.

Any other fence language fails the test, so nothing in the docs goes unchecked by
accident.  The Jacobian planner's predicted times are shown for its fixed default rates,
so every page runs with ``GRADC_CALIBRATION=off``.

:func:`test_site_builds` builds the site with ``mkdocs build --strict`` when mkdocs and
mkdocstrings are installed (``pip install "mkdocs>=1.6" "mkdocstrings[python]>=1.0.8"``),
and is skipped otherwise.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + sorted(DOCS.glob("api/*.md"))
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<lang>[\w+-]*)[^\n]*$")


def blocks(path: Path):
    """``(language, body, line)`` of every fenced code block of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, start = m["indent"], m["fence"], i + 1
        body, i = [], i + 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path.name}:{start}: unclosed code fence")
        out.append((m["lang"].lower(), "\n".join(body) + "\n", start + 1))
        i += 1
    return out


def run_python(body, ns, where, workdir):
    first = body.lstrip().splitlines()[0] if body.strip() else ""
    if first.startswith("# file:"):
        (workdir / first[len("# file:"):].strip()).write_text(body, encoding="utf-8")
    if re.search(r"^>>>( |$)", body, re.M):
        path, line = where.rsplit(":", 1)
        test = doctest.DocTestParser().get_doctest(body, ns, where, path, int(line) - 1)
        report = io.StringIO()
        runner = doctest.DocTestRunner(optionflags=FLAGS)
        runner.run(test, out=report.write, clear_globs=False)
        ns.update(test.globs)
        if runner.failures:
            pytest.fail(f"doctest failed in {where}:\n{report.getvalue()}", pytrace=False)
    else:
        path, line = where.rsplit(":", 1)
        code = compile("\n" * (int(line) - 1) + body, path, "exec")
        exec(code, ns)  # noqa: S102 - the docs' own examples


def commands(body, lang):
    """``[(command, expected output)]`` of a console or bash block."""
    if lang != "console":
        return [(ln.strip(), None) for ln in body.splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    out = []
    for ln in body.splitlines():
        if ln.startswith("$ "):
            out.append([ln[2:].strip(), []])
        elif out:
            out[-1][1].append(ln)
        elif ln.strip():
            raise AssertionError(f"console block must start with a '$ ' command, got {ln!r}")
    return [(c, "\n".join(o).strip("\n")) for c, o in out]


def optional_dependencies():
    """The extras of pyproject.toml (None before Python 3.11, which has no tomllib)."""
    try:
        import tomllib
    except ImportError:
        return None
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"].get("optional-dependencies", {})


def run_gradc(argv, env, expected, where, monkeypatch):
    import gradc.cli
    import gradc.demo

    skipped = []
    if argv[:1] in (["demo"], ["compare"]):  # too slow to run here: check arguments only
        monkeypatch.setattr(gradc.demo, "run", lambda **kw: skipped.append(kw))
        monkeypatch.setattr(gradc.cli, "compare", lambda target, **kw: skipped.append(target))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = gradc.cli.main(argv)
    text = buf.getvalue()
    if skipped:
        assert rc == 0, f"{where}: gradc {' '.join(argv)} failed:\n{text}"
        return
    error = "gradc: error:" in (expected or "")
    assert rc == (2 if error else 0), f"{where}: gradc {' '.join(argv)} exited {rc}:\n{text}"
    if expected is not None and expected != "":
        checker = doctest.OutputChecker()
        if not checker.check_output(expected + "\n", text, FLAGS):
            pytest.fail(f"{where}: output of gradc {' '.join(argv)} differs:\n"
                        + checker.output_difference(doctest.Example("", expected + "\n"),
                                                    text, FLAGS), pytrace=False)


def check_shell(command, expected, where, monkeypatch):
    parts = command.split("&&")
    for idx, part in enumerate(parts):
        words = shlex.split(part)
        env = {}
        if words[:1] == ["env"]:  # env [-u NAME]... [NAME=VALUE]... COMMAND
            words.pop(0)
            while words[:1] == ["-u"] and len(words) > 1:
                del words[:2]
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            k, _, v = words.pop(0).partition("=")
            env[k] = v
        assert words, f"{where}: empty command in {command!r}"
        name, args = words[0], words[1:]
        if name == "gradc":
            run_gradc(args, env, expected if idx == len(parts) - 1 else None, where,
                      monkeypatch)
        elif name == "pip":
            assert args[:1] == ["install"], f"{where}: unexpected pip command {part!r}"
            extras = {e.strip() for a in args for m in re.finditer(r"^\.\[([^]]*)\]$", a)
                      for e in m[1].split(",")}
            known = optional_dependencies()
            missing = extras - set(known if known is not None else extras)
            assert not missing, f"{where}: pyproject.toml has no extra {sorted(missing)}"
        elif name == "mkdocs":
            assert args[:1] in (["build"], ["serve"]), f"{where}: unexpected {part!r}"
        elif name == "python" and args[:2] == ["-m", "pytest"]:
            pass
        elif name == "python" and args and args[0].endswith(".py"):
            assert (ROOT / args[0]).is_file(), f"{where}: {args[0]} does not exist"
        elif name == "export" and all("=" in a for a in args):
            pass
        else:
            raise AssertionError(f"{where}: the doc test does not know how to check {part!r}")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GRADC_CALIBRATION", "off")
    saved_env = dict(os.environ)
    saved_modules = set(sys.modules)
    ns = {"__name__": "__docs__"}
    try:
        for lang, body, line in blocks(page):
            where = f"{page}:{line}"
            if lang == "python":
                run_python(body, ns, where, tmp_path)
            elif lang in ("console", "bash", "sh"):
                for command, expected in commands(body, lang):
                    check_shell(command, expected, where, monkeypatch)
            elif lang == "text":
                continue
            else:
                raise AssertionError(f"{where}: code block language {lang or '(none)'!r}; use "
                                     "python, console, bash or text")
    finally:  # a page may set environment variables (a cache folder, ...): undo that
        for key in set(os.environ) - set(saved_env):
            del os.environ[key]
        for key, value in saved_env.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        for name in set(sys.modules) - saved_modules:
            mod = sys.modules.get(name)
            if str(tmp_path) in str(getattr(mod, "__file__", "") or ""):
                del sys.modules[name]


def test_every_page_is_in_the_nav():
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in PAGES:
        assert str(page.relative_to(DOCS)) in text, f"{page.name} is missing from mkdocs.yml nav"


def test_site_builds(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, textwrap.indent(out.stderr[-5000:], "  ")
    assert (tmp_path / "site" / "index.html").is_file()
