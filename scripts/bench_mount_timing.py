"""The timed parts of scripts/bench_mount.sh: reads through a mount, walks, a CPU loop, Parquet.

bench_mount.sh runs one subcommand at a time, through its `py` function:

    python3 scripts/bench_mount_timing.py read PATH SIZE [--sha HEX] [--drop]
    python3 scripts/bench_mount_timing.py probe CACHE ID PREFIX MNT SRCDIR KIND=REL...
    python3 scripts/bench_mount_timing.py walk TOP SRCDIR
    python3 scripts/bench_mount_timing.py cpu
    python3 scripts/bench_mount_timing.py parquet PATH SOURCE ROW_GROUP

Each times its work inside Python (the interpreter's start is not counted) and prints the
seconds on stdout, "%.6f"; probe and parquet print one "NAME SECONDS ..." line per measurement.
Every read is checked against the source (SRCDIR, SOURCE: the server's local files), by size
and SHA-256 or by the bytes themselves: on a mismatch it prints "WRONG DATA: ..." on stderr and
exits with status 3. The data itself is written by scripts/bench_data.py.
"""

import argparse
import hashlib
import os
import sys
import time

MiB = 1 << 20


def wrong(msg):
    print("WRONG DATA: " + msg, file=sys.stderr)
    sys.exit(3)


def source_bytes(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(16 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def fnv1a(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def cache_state(cache, mid, key, rel):
    """What our cache holds of KEY right now (peeks at its layout: complete file, or partial)."""
    if os.path.exists(os.path.join(cache, mid, rel)):
        return "complete"
    partial = os.path.join(cache, ".s3-synchronizer", "partial", mid)
    for k in (key, rel):
        if os.path.exists(os.path.join(partial, "%016x.part" % fnv1a(k.encode()))):
            return "started"
    return "not-started"


def read(path, size, want_sha=None, drop=False):
    """Sequential read in 1 MiB reads; with want_sha, hashes as it reads (a check, not a time).
    With drop, first drops the pages the kernel keeps of this file (of this file only)."""
    if drop:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    buf = bytearray(MiB)
    view = memoryview(buf)
    h = hashlib.sha256() if want_sha else None
    total = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            if h:
                h.update(view[:n])
            total += n
    t = time.perf_counter() - t0
    if total != size:
        wrong("%s: read %d bytes, expected %d" % (path, total, size))
    if h and h.hexdigest() != want_sha:
        wrong("%s: the bytes read differ from the source's" % path)
    print("%.6f" % t)


def probe(cache, mid, prefix, mnt, srcdir, specs):
    """The reads of first-byte and tail-read, in order; prints "KIND SECONDS STATE_BEFORE".

    Each spec is KIND=REL, REL the key without PREFIX (the mount's ID directory under MNT):
    first (open + read 1 byte), whole (every byte, in 1 MiB reads) or tail (the last MiB)."""
    for spec in specs:
        kind, rel = spec.split("=", 1)
        path = os.path.join(mnt, mid, rel)
        source = os.path.join(srcdir, rel)
        state = cache_state(cache, mid, prefix + rel, rel)
        if kind == "first":
            t0 = time.perf_counter()
            with open(path, "rb", buffering=0) as f:
                data = f.read(1)
            t = time.perf_counter() - t0
            if data != source_bytes(source, 0, 1):
                wrong("%s: the first byte differs from the source's" % path)
        elif kind == "whole":
            chunks = []
            t0 = time.perf_counter()
            with open(path, "rb", buffering=0) as f:
                while True:
                    b = f.read(MiB)
                    if not b:
                        break
                    chunks.append(b)
            t = time.perf_counter() - t0
            h = hashlib.sha256()
            for b in chunks:
                h.update(b)
            if h.hexdigest() != sha_file(source):
                wrong("%s: the bytes read differ from the source's" % path)
        elif kind == "tail":
            data = b""
            t0 = time.perf_counter()
            with open(path, "rb", buffering=0) as f:
                f.seek(-MiB, os.SEEK_END)
                while len(data) < MiB:
                    b = f.read(MiB - len(data))
                    if not b:
                        break
                    data += b
            t = time.perf_counter() - t0
            if data != source_bytes(source, os.path.getsize(source) - MiB, MiB):
                wrong("%s: its last MiB differs from the source's" % path)
        else:
            raise SystemExit("unknown probe " + kind)
        print(kind, "%.6f" % t, state, flush=True)


def listing(top):
    out = []
    for root, _, files in os.walk(top):
        for name in files:
            p = os.path.join(root, name)
            out.append((os.path.relpath(p, top), os.stat(p).st_size))
    return out


def walk(top, srcdir):
    """os.walk + os.stat of every file under TOP; checks the names and sizes against SRCDIR's."""
    t0 = time.perf_counter()
    seen = listing(top)
    t = time.perf_counter() - t0
    if sorted(seen) != sorted(listing(srcdir)):
        wrong("%s: the names or sizes differ from the source's (%d files seen)" % (top, len(seen)))
    print("%.6f" % t)


def cpu():
    """A CPU-bound loop: 5 million additions."""
    t0 = time.perf_counter()
    x = 0
    for i in range(5_000_000):
        x += i
    if x != 5_000_000 * 4_999_999 // 2:
        wrong("the CPU loop computed %d" % x)
    print("%.6f" % (time.perf_counter() - t0))


def parquet(path, source, rg):
    """read_metadata, then ParquetFile(path).read_row_group(rg); prints "meta SECONDS",
    "rowgroup SECONDS" and "bytes N" (the row group's compressed size)."""
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    md = pq.read_metadata(path)
    t1 = time.perf_counter()
    table = pq.ParquetFile(path).read_row_group(rg)
    t2 = time.perf_counter()
    want = pq.read_metadata(source)
    if not md.equals(want):
        wrong("%s: the metadata differs from the source's" % path)
    if not table.equals(pq.ParquetFile(source).read_row_group(rg)):
        wrong("%s: row group %d differs from the source's" % (path, rg))
    g = want.row_group(rg)
    print("meta %.6f" % (t1 - t0))
    print("rowgroup %.6f" % (t2 - t1))
    print("bytes %d" % sum(g.column(i).total_compressed_size for i in range(g.num_columns)))


def ls_l(top, entries):
    """`ls -l TOP` (its output discarded); checks it listed ENTRIES entries."""
    import subprocess

    t0 = time.perf_counter()
    out = subprocess.run(["ls", "-l", top], check=True, capture_output=True).stdout
    t = time.perf_counter() - t0
    lines = out.count(b"\n") - 1  # the "total" line
    if lines != entries:
        wrong("ls -l %s listed %d entries, not %d" % (top, lines, entries))
    print("%.6f" % t)


def dataset(top):
    """pyarrow.dataset discovery of the hive-partitioned Parquet files under TOP, then a
    query of one partition (year=2022, month=3); prints "discovery SECONDS" and
    "discovery-query SECONDS"."""
    import pyarrow.dataset as ds

    t0 = time.perf_counter()
    found = ds.dataset(top, format="parquet", partitioning="hive")
    files = found.files
    t1 = time.perf_counter()
    table = found.to_table(filter=(ds.field("year") == 2022) & (ds.field("month") == 3))
    t2 = time.perf_counter()
    if len(files) != 2000:
        wrong("%s: %d Parquet files discovered, not 2,000" % (top, len(files)))
    if table.num_rows != 40_000 or set(table.column("value").to_pylist()) != {202203.0}:
        wrong("%s: the query of year=2022/month=3 read %d rows, or others" % (top, table.num_rows))
    print("discovery %.6f" % (t1 - t0))
    print("discovery-query %.6f" % (t2 - t1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("read", help="a sequential read in 1 MiB reads")
    p.add_argument("path")
    p.add_argument("size", type=int, help="the bytes it must read")
    p.add_argument("--sha", help="check the bytes against this SHA-256 (hex)")
    p.add_argument("--drop", action="store_true", help="drop the file's cached pages first")
    p.set_defaults(run=lambda a: read(a.path, a.size, a.sha, a.drop))

    p = sub.add_parser("probe", help="the reads of first-byte and tail-read")
    for name in ("cache", "id", "prefix", "mnt", "srcdir"):
        p.add_argument(name)
    p.add_argument("specs", nargs="*", metavar="KIND=REL")
    p.set_defaults(run=lambda a: probe(a.cache, a.id, a.prefix, a.mnt, a.srcdir, a.specs))

    p = sub.add_parser("walk", help="os.walk + os.stat of a tree")
    p.add_argument("top")
    p.add_argument("srcdir")
    p.set_defaults(run=lambda a: walk(a.top, a.srcdir))

    p = sub.add_parser("ls-l", help="ls -l of a directory")
    p.add_argument("top")
    p.add_argument("entries", type=int)
    p.set_defaults(run=lambda a: ls_l(a.top, a.entries))

    p = sub.add_parser("dataset", help="pyarrow.dataset discovery and a partition query")
    p.add_argument("top")
    p.set_defaults(run=lambda a: dataset(a.top))

    p = sub.add_parser("cpu", help="a CPU-bound loop")
    p.set_defaults(run=lambda a: cpu())

    p = sub.add_parser("parquet", help="read_metadata and read_row_group with pyarrow")
    p.add_argument("path")
    p.add_argument("source")
    p.add_argument("rg", type=int, metavar="row_group")
    p.set_defaults(run=lambda a: parquet(a.path, a.source, a.rg))

    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
