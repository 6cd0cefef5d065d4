"""benchmarks/journal_sync.py times real journal appends under both sync policies and writes JSON plus a
markdown table, leaving no journal behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "journal_sync.py"


def test_journal_sync_writes_json_and_table(tmp_path):
    args = ["--batch", "4", "--dim", "8", "--rounds", "2", "--appends", "3", "--out", tmp_path]
    subprocess.run([sys.executable, SCRIPT, *map(str, args)], check=True, capture_output=True)
    result = json.loads((tmp_path / "journal.json").read_text())
    rows = {r["policy"]: r for r in result["rows"]}
    assert set(rows) == {"fsync per batch", "DiskSync"} and result["dim"] == 8
    assert all(r["appends"] == 6 and 0 < r["median_ms"] <= r["max_ms"] for r in rows.values())
    assert "| policy | median ms |" in (tmp_path / "journal.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.json", "journal.md"]  # scratch removed
