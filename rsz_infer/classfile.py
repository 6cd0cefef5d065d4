"""Class files (`new.txt`): the classes a user wants tiles labeled with.

Format: UTF-8 (or UTF-16 with a byte order mark), one class per line, `name` or `name: description` (the
description defaults to the name).
`#` starts a comment (a full line, or ` # ...` after the text); blank lines are ignored.
A name must be unique (by class_name_key), non-empty, and a line at most MAX_LINE_CHARS characters.
"""

from __future__ import annotations

import codecs
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from rsz_infer.errors import RszError

MAX_LINE_CHARS = 500

# A trailing comment needs whitespace before `#`, so names such as "C#" or "lane#2" keep their hash.
_TRAILING_COMMENT = re.compile(r"\s+#.*$")


@dataclass(frozen=True)
class ClassEntry:
    name: str
    description: str


def class_name_key(name: str) -> str:
    """What tells class names apart: letters and digits, not case, spaces or punctuation ("Dense
    Residential", "dense_residential", "dense-residential" and AID's "DenseResidential" are one class).
    rsz-train matches split files to class folders by it, and rsz-infer class files to trained classes.
    A name with no letter or digit keys as itself (casefolded), so two such names stay two classes.
    Unicode NFC first: a folder unpacked on macOS is named "cafe" + U+0301 (NFD), a split file or class
    file "café" (NFC), and the combining accent alone would be dropped as punctuation ("cafe")."""
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())
    return re.sub(r"[\W_]+", "", folded) or folded


def _squash(text: str) -> str:
    """Collapse runs of whitespace so "dense  residential" and "dense residential" are one class."""
    return " ".join(text.split())


def parse_class_lines(text: str, source: str) -> list[ClassEntry]:
    """Parse the text of a class file; `source` names it (a path) in error messages."""
    entries: list[ClassEntry] = []
    first_of: dict[str, tuple[int, str]] = {}  # key -> (line, name as written there)
    for number, raw in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        if len(raw) > MAX_LINE_CHARS:
            raise RszError(f"{where}: line is {len(raw)} characters long, the limit is {MAX_LINE_CHARS}")
        line = raw.strip()
        if "\0" in raw or any(ord(c) < 32 and c != "\t" for c in raw):
            # NUL and control characters end strings in C libraries and break CSV cells
            raise RszError(f"{where}: a NUL or control character in {raw.strip()!r}; remove it")
        if not line or line.startswith("#"):
            continue
        line = _TRAILING_COMMENT.sub("", line)
        name, sep, description = line.partition(":")
        name, description = _squash(name), _squash(description)
        if not name:
            raise RszError(
                f"{where}: empty class name in {raw.strip()!r} (expected 'name' or 'name: description')"
            )
        key = class_name_key(name)
        if key in first_of:
            line, first = first_of[key]
            raise RszError(
                f"{where}: duplicate class {name!r} (already on line {line} as {first!r}; names ignore case, "
                "spaces and punctuation)"
            )
        first_of[key] = (number, name)
        entries.append(ClassEntry(name=name, description=description if sep and description else name))
    if not entries:
        raise RszError(f"{source}: no classes found (expected one 'name' or 'name: description' per line)")
    return entries


def read_class_file(path: str | Path) -> list[ClassEntry]:
    """Read and parse a class file; every problem is a one-line RszError naming the file (and line)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RszError(f"{path}: class file not found") from None
    except IsADirectoryError:
        raise RszError(f"{path}: is a directory, expected a class file") from None
    except OSError as err:
        raise RszError(f"{path}: cannot read class file ({err.strerror})") from None
    return parse_class_lines(decode_text(data, path), str(path))


def decode_text(data: bytes, path: Path | str) -> str:
    """A text file's bytes in UTF-8 (a BOM tolerated: some Windows editors write one), or UTF-16 with a BOM
    (what Windows PowerShell's `>` and Notepad's "Unicode" write); class files, split lists, attribute
    files and caption JSONs alike. One line naming the file (and the line) where it is neither."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as err:
            raise RszError(f"{path}: not valid UTF-16 ({err.reason}); save it as UTF-8") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise RszError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x})") from None


def with_training_descriptions(
    entries: list[ClassEntry], trained: dict[str, str]
) -> tuple[list[ClassEntry], str | None]:
    """Each entry that gives only a name (its description is the name) of a class the model was trained
    on takes the description it was trained with: (entries, a note naming them, or None).

    Why: a model learned a seen class's images against its training text ("mobile home park", or a
    benchmark's long description); a bare "mobilehomepark" line would score that class by other text.
    Names match by class_name_key, as the seen classes of calibrated stacking do."""
    by_name = {class_name_key(name): text for name, text in trained.items()}
    out, taken = [], []
    for entry in entries:
        text = by_name.get(class_name_key(entry.name))
        if text is not None and entry.description == entry.name and text != entry.name:
            out.append(ClassEntry(name=entry.name, description=text))
            taken.append(entry.name)
        else:
            out.append(entry)
    if not taken:
        return out, None
    more = ", ..." if len(taken) > 3 else ""
    return out, (
        f"{len(taken)} class(es) named without a description ({', '.join(taken[:3])}{more}) take the "
        "description the model was trained with"
    )


def class_file_hash(entries: list[ClassEntry]) -> str:
    """sha256 of the parsed classes (comments, blank lines and spacing do not change it); a cache key."""
    canonical = "\n".join(f"{entry.name}\t{entry.description}" for entry in entries)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
