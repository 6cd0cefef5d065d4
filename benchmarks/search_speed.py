"""Retrieval search speed: exact numpy search vs the FAISS HNSW graph of `rsz-infer index`.

A plain script (no torch). Embeddings are synthetic but clustered like image embeddings (points around
`--clusters` centres, L2-normalised); queries are stored rows plus a little noise. Recall@k is measured
against exact search, which is also what ANN_MIN_ROWS in rsz_infer/index.py was chosen from.
    python benchmarks/search_speed.py --rows 50000,200000 --dim 256 --out results/search
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout first

from rsz_bench.report import markdown_table, new_result, write_result  # noqa: E402
from rsz_infer.index import build_ann, nearest  # noqa: E402


def clustered_embeddings(rows: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    emb = centres[rng.integers(0, clusters, rows)] + 0.5 * rng.normal(size=(rows, dim)).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def measure(rows: int, dim: int, clusters: int, queries: int, k: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    emb = clustered_embeddings(rows, dim, clusters, rng)
    t0 = time.perf_counter()
    ann = build_ann(emb)
    build_s = time.perf_counter() - t0
    q = emb[rng.choice(rows, queries)] + 0.02 * rng.normal(size=(queries, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    t0 = time.perf_counter()
    exact = [nearest(emb, x, k)[0] for x in q]
    exact_ms = (time.perf_counter() - t0) / queries * 1e3
    t0 = time.perf_counter()
    approx = [nearest(emb, x, k, ann)[0] for x in q]
    hnsw_ms = (time.perf_counter() - t0) / queries * 1e3
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact, approx)]))
    return {
        "rows": rows,
        "dim": dim,
        "build_s": round(build_s, 2),
        "exact_ms": round(exact_ms, 3),
        "hnsw_ms": round(hnsw_ms, 3),
        f"recall_at_{k}": round(recall, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="50000,200000", help="comma-separated index sizes")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--clusters", type=int, default=500)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("results/search"))
    args = parser.parse_args()
    rows = [measure(int(n), args.dim, args.clusters, args.queries, args.k) for n in args.rows.split(",")]
    result = new_result("search", "Retrieval search: exact vs FAISS HNSW", rows=rows)
    columns = [
        ("rows", "rows"),
        ("dim", "dim"),
        ("build_s", "HNSW build s"),
        ("exact_ms", "exact ms/query"),
        ("hnsw_ms", "HNSW ms/query"),
        (f"recall_at_{args.k}", f"recall@{args.k}"),
    ]
    json_path, md_path = write_result(result, markdown_table(rows, columns), args.out, "search")
    print(md_path.read_text(), end="")


if __name__ == "__main__":
    main()
