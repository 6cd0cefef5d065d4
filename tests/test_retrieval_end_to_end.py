"""Retrieval end to end with a real (tiny) trained MSA (tests/conftest.py's session run): train -> export
(rsz-export's command line, in process) -> rsz-infer index/search/rerank, and rsz-bench accuracy on the
same bundle, both through the command lines users type."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
    return result


@pytest.fixture(scope="module")
def msa_bundle(tiny_msa_run, tiny_msa_bundle, tiny_benchmark, tmp_path_factory):
    """The session's tiny real MSA run and its README export (rsz-export --fp16, engines), tests/conftest.py:
    trained and exported once for this file and tests/export."""
    exported, bundle = tiny_msa_bundle
    assert exported.exit_code == 0, exported.output
    return tmp_path_factory.mktemp("msa"), tiny_benchmark, tiny_msa_run, bundle


def test_index_search_rerank_and_gallery(msa_bundle):
    root, bench, _, bundle = msa_bundle
    forest = bench / "images" / "forest"
    idx = root / "idx"
    _run("rsz-infer", "index", str(forest), "--model", str(bundle), "--out", str(idx))
    n_forest = len(list(forest.iterdir()))
    # appending another folder adds its tiles and keeps the first ones
    _run("rsz-infer", "index", str(bench / "images" / "beach"), "--model", str(bundle), "--out", str(idx))
    n_total = n_forest + len(list((bench / "images" / "beach").iterdir()))
    assert len((idx / "tiles.jsonl").read_text().splitlines()) == n_total

    plain = _run("rsz-infer", "search", str(idx), "--text", "dense green trees", "-k", "5", "--json")
    hits = [json.loads(line) for line in plain.stdout.splitlines() if line.startswith("{")]
    assert len(hits) == 5 and [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert hits == sorted(hits, key=lambda h: -h["score"])

    html = root / "report.html"
    reranked = _run(
        "rsz-infer",
        "search",
        str(idx),
        "--text",
        "dense green trees",
        "-k",
        "5",
        "--rerank",
        "10",
        "--json",
        "--html",
        str(html),
    )
    rhits = [json.loads(line) for line in reranked.stdout.splitlines() if line.startswith("{")]
    assert len(rhits) == 5 and rhits == sorted(rhits, key=lambda h: -h["score"])
    # the rerank head re-scores: its scores are not the plain cosine similarities
    assert any(abs(h["score"] - h["similarity"]) > 1e-6 for h in rhits)
    page = html.read_text()
    assert page.count("data:image/") >= 5 and "dense green trees" in page


def test_bench_accuracy_onnx_matches_pytorch(msa_bundle):
    root, bench, run, bundle = msa_bundle
    from rsz_train.data.synth import DEFAULT_SPLIT

    out = root / "acc"
    _run(
        "rsz-bench",
        "accuracy",
        "--model",
        str(bundle),
        "--run",
        str(run),
        "--data",
        str(bench),
        "--split",
        DEFAULT_SPLIT,
        "--backend",
        "ort",
        "--precision",
        "fp32",
        "--out",
        str(out),
    )
    report = json.loads(next(out.glob("*.json")).read_text())
    assert next(out.glob("*.md")).read_text().startswith("## Accuracy")
    rows = {(r["backend"], r["precision"]): r for r in report["rows"]}
    reference, ort = rows[("torch", "fp32")], rows[("ort", "fp32")]
    assert ort["status"] == "ok"
    assert abs(ort["zsl"] - reference["zsl"]) <= 0.005 and abs(ort["mR"] - reference["mR"]) <= 0.5
