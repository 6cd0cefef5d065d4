"""benchmarks/search_speed.py runs on a tiny index and writes JSON plus a markdown table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "search_speed.py"


def test_search_speed_writes_json_and_table(tmp_path):
    args = ["--rows", "500,1000", "--dim", "16", "--clusters", "20", "--queries", "5", "-k", "5"]
    subprocess.run([sys.executable, SCRIPT, *args, "--out", tmp_path], check=True, capture_output=True)
    result = json.loads((tmp_path / "search.json").read_text())
    assert [r["rows"] for r in result["rows"]] == [500, 1000] and result["machine"]["cores"] >= 1
    for row in result["rows"]:
        assert row["build_s"] >= 0 and row["exact_ms"] > 0 and row["hnsw_ms"] > 0
        assert 0.5 <= row["recall_at_5"] <= 1.0  # a working graph finds most true neighbours
    table = (tmp_path / "search.md").read_text()
    assert "| rows | dim | HNSW build s |" in table and "Command: `" in table
