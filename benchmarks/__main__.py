"""`python -m rsz_bench`: the rsz-bench console script's entry (rsz_infer.entry.bench_main)."""

from rsz_infer.entry import bench_main

if __name__ == "__main__":
    bench_main()
