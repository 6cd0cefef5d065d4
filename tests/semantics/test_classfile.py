from __future__ import annotations

from pathlib import Path

import pytest

from rsz_infer.classfile import ClassEntry, class_file_hash, parse_class_lines, read_class_file
from rsz_infer.errors import RszError


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "new.txt"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def test_parses_names_descriptions_and_comments(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# my classes\n"
        "\n"
        "airport: runways, taxiways and parked planes\n"
        "  dense   residential  \n"
        "solar farm: rows of dark panels   # added in May\n"
        "C#:a class whose name keeps its hash\n"
        "beach:\n",
    )
    assert read_class_file(path) == [
        ClassEntry("airport", "runways, taxiways and parked planes"),
        ClassEntry("dense residential", "dense residential"),
        ClassEntry("solar farm", "rows of dark panels"),
        ClassEntry("C#", "a class whose name keeps its hash"),
        ClassEntry("beach", "beach"),
    ]


def test_byte_order_mark_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffforest: trees\r\nriver\r\n".encode())
    assert [e.name for e in read_class_file(path)] == ["forest", "river"]


def test_utf16_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    # Windows PowerShell 5's `"forest: trees" > new.txt` writes UTF-16 LE with a BOM
    for encoding in ("utf-16-le", "utf-16-be"):
        bom = "\ufeff".encode(encoding)
        path = write(tmp_path, bom + "forest: trees\r\ncafé\r\n".encode(encoding))
        assert read_class_file(path) == [ClassEntry("forest", "trees"), ClassEntry("café", "café")]
    with pytest.raises(RszError, match=r"new\.txt: not valid UTF-16 \(truncated data\); save it as UTF-8"):
        read_class_file(write(tmp_path, "\ufeffforest".encode("utf-16-le") + b"\x00"))


def test_hash_ignores_layout_but_not_content() -> None:
    a = parse_class_lines("forest: trees\nriver\n", "a")
    b = parse_class_lines("# comment\nforest:   trees   # note\n\n river\n", "b")
    c = parse_class_lines("forest: pine trees\nriver\n", "c")
    assert class_file_hash(a) == class_file_hash(b)
    assert class_file_hash(a) != class_file_hash(c)
    assert len(class_file_hash(a)) == 64


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("forest\nriver\nForest: again\n", r"new\.txt:3: duplicate class 'Forest' \(already on line 1"),
        (
            "mobile_home_park\nMobile Home-Park: again\n",
            r"new\.txt:2: duplicate class 'Mobile Home-Park' \(already on line 1 as 'mobile_home_park'",
        ),
        ("# only a comment\n\n   \n", r"new\.txt: no classes found"),
        ("", r"new\.txt: no classes found"),
        ("forest\n" + "x" * 501 + "\n", r"new\.txt:2: line is 501 characters long, the limit is 500"),
        ("forest\n: a description without a name\n", r"new\.txt:2: empty class name"),
    ],
)
def test_bad_class_files_give_one_line_errors(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(RszError, match=message) as err:
        read_class_file(write(tmp_path, content))
    assert "\n" not in str(err.value)


def test_line_of_exactly_the_limit_is_accepted(tmp_path: Path) -> None:
    assert read_class_file(write(tmp_path, "y" * 500 + "\n"))[0].name == "y" * 500


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(RszError, match=r"new\.txt:2: not valid UTF-8"):
        read_class_file(write(tmp_path, b"forest\nfor\xeat\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RszError, match="absent.txt: class file not found"):
        read_class_file(tmp_path / "absent.txt")
