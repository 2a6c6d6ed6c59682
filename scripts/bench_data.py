"""Writes the benchmarks' data onto the local disk that the S3 server will serve.

The two benchmark scripts run it before they start the server (which caches its listings):

    python3 scripts/bench_data.py sets ROOT SET...    # scripts/bench.sh
    python3 scripts/bench_data.py cases ROOT CASE...  # scripts/bench_mount.sh

ROOT is the directory of bucket `bench` (each of its top-level directories is a key prefix).

sets: the sets that bench.sh copies, in the order given, each under ROOT/SET/:
    small     1,000 random objects of 256 KiB (obj-0000.bin ...)
    tiny      10,000 random objects of 4 KiB in 10 directories (d-0/obj-0000.bin ...
              d-9/obj-9999.bin): many small files, as in a dataset of one file per sample
    large     2 random objects of 512 MiB
    up-small  the files that bench.sh uploads (ROOT is then a local directory): as small
    up-large  as large

cases: what the mount cases of bench_mount.sh read (see its --help):
    cached-read  cr/big-1GiB.bin, random
    first-byte   bl/zz/first-64MiB.bin and bl/zz/whole-64MiB.bin, random, and the backlog
    tail-read    bl/zz/tail-1GiB.bin, random, and the backlog
    cpu-share    the backlog: bl/backlog/obj-000.bin ... obj-127.bin, 32 MiB each, sparse on disk
                 (the server still sends every byte)
    tiny-backlog (with any of the three above) a backlog of tiny objects instead:
                 bl/backlog/d-000/f-00000 ... d-099/f-39999, 40,000 random objects of 1 KiB
    walk-stat    ws/d-000/f-000.bin ... ws/d-099/f-099.bin: 10,000 random files of 1 KiB
    listing      ls/d-000/f-0000 ... ls/d-099/f-0999: 100,000 files of 1 byte
    walk-100k    the same
    ls-l         lsl/all/f-000000 ... lsl/all/f-099999: 100,000 files of 1 byte in one directory
    discovery    ds/year=2020/month=1/part-00.parquet ... ds/year=2024/month=10/part-39.parquet:
                 2,000 small Parquet files of 1,000 rows in 50 hive partitions (needs pyarrow)
    parquet      pq/data-2GiB.parquet: 64 row groups of 4 random int64 columns, 32 MiB each,
                 uncompressed (needs pyarrow)
"""

import argparse
import os

MiB = 1 << 20

# name -> (objects, bytes each, directories they are spread over)
SETS = {"small": (1000, 256 * 1024, 0), "large": (2, 512 * MiB, 0), "tiny": (10000, 4096, 10)}
SETS.update({"up-" + name: SETS[name] for name in ("small", "large")})  # the upload sets
CASES = ("cached-read", "first-byte", "tail-read", "cpu-share", "walk-stat", "walk-100k", "listing", "ls-l", "discovery", "parquet", "tiny-backlog")


def random_file(path, size):
    """Writes SIZE random bytes to PATH (its directories made as needed), 16 MiB at a time."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


def write_sets(root, sets):
    for name in sets:
        count, size, dirs = SETS[name]
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            sub = "d-%d" % (i % dirs) if dirs else ""
            random_file(os.path.join(root, name, sub, "obj-%04d.bin" % i), size)


def write_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(path))
    rows = 1 << 20  # 4 int64 columns: 32 MiB a row group
    schema = pa.schema([(c, pa.int64()) for c in ("a", "b", "c", "d")])
    with pq.ParquetWriter(path, schema, compression="none", use_dictionary=False) as w:
        for _ in range(64):
            cols = [
                pa.Array.from_buffers(pa.int64(), rows, [None, pa.py_buffer(os.urandom(8 * rows))])
                for _ in schema
            ]
            w.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=rows)


def write_partitions(top):
    """2,000 Parquet files of 1,000 rows (an id and a value) in 50 hive partitions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for year in range(2020, 2025):
        for month in range(1, 11):
            part = os.path.join(top, "year=%d" % year, "month=%d" % month)
            os.makedirs(part)
            for i in range(40):
                ids = pa.array(range(i * 1000, (i + 1) * 1000), pa.int64())
                values = pa.array([float(year * 100 + month)] * 1000, pa.float64())
                table = pa.table({"id": ids, "value": values})
                pq.write_table(table, os.path.join(part, "part-%02d.parquet" % i))


def write_cases(root, cases):
    if "cached-read" in cases:
        random_file(os.path.join(root, "cr/big-1GiB.bin"), 1024 * MiB)
    if not {"first-byte", "tail-read", "cpu-share"}.isdisjoint(cases) and "tiny-backlog" in cases:
        for d in range(100):
            os.makedirs(os.path.join(root, "bl/backlog/d-%03d" % d))
            for i in range(d * 400, (d + 1) * 400):
                with open(os.path.join(root, "bl/backlog/d-%03d/f-%05d" % (d, i)), "wb") as f:
                    f.write(os.urandom(1024))
    elif not {"first-byte", "tail-read", "cpu-share"}.isdisjoint(cases):
        # The backlog: sparse on the server's disk (it still sends every byte).
        os.makedirs(os.path.join(root, "bl/backlog"), exist_ok=True)
        for i in range(128):
            with open(os.path.join(root, "bl/backlog/obj-%03d.bin" % i), "wb") as f:
                f.truncate(32 * MiB)
    if "first-byte" in cases:
        random_file(os.path.join(root, "bl/zz/first-64MiB.bin"), 64 * MiB)
        random_file(os.path.join(root, "bl/zz/whole-64MiB.bin"), 64 * MiB)
    if "tail-read" in cases:
        random_file(os.path.join(root, "bl/zz/tail-1GiB.bin"), 1024 * MiB)
    if "walk-stat" in cases:
        for d in range(100):
            os.makedirs(os.path.join(root, "ws/d-%03d" % d))
            for i in range(100):
                with open(os.path.join(root, "ws/d-%03d/f-%03d.bin" % (d, i)), "wb") as f:
                    f.write(os.urandom(1024))
    if "listing" in cases or "walk-100k" in cases:
        for d in range(100):
            os.makedirs(os.path.join(root, "ls/d-%03d" % d))
            for i in range(1000):
                with open(os.path.join(root, "ls/d-%03d/f-%04d" % (d, i)), "wb") as f:
                    f.write(b"x")
    if "ls-l" in cases:
        os.makedirs(os.path.join(root, "lsl/all"))
        for i in range(100_000):
            with open(os.path.join(root, "lsl/all/f-%06d" % i), "wb") as f:
                f.write(b"x")
    if "discovery" in cases:
        write_partitions(os.path.join(root, "ds"))
    if "parquet" in cases:
        write_parquet(os.path.join(root, "pq/data-2GiB.parquet"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sets", help="the sets of bench.sh")
    p.add_argument("root")
    p.add_argument("sets", nargs="+", choices=sorted(SETS), metavar="SET")
    p = sub.add_parser("cases", help="the files of bench_mount.sh's cases")
    p.add_argument("root")
    p.add_argument("cases", nargs="+", choices=CASES, metavar="CASE")
    args = parser.parse_args()
    if args.command == "sets":
        write_sets(args.root, args.sets)
    else:
        write_cases(args.root, set(args.cases))


if __name__ == "__main__":
    main()
