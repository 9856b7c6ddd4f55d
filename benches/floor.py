#!/usr/bin/env python3
"""The floor of a tree shape: the least time a copier can take to make a
tree's names on a share, here made empty by many threads. Directories are
made level by level and files after them, each level's work handed out
round-robin over the parent directories, so every directory has creates in
flight at once (the kernel serialises creates within one directory, not
across directories).

With --data, the floor of a faithful copy on the same schedule: each file
is created, its bytes written, its mtime set, and closed (a symlink made
with its mtime), and then every directory gets its mtime (a copy that
keeps data and times cannot send fewer requests per file).

    benches/floor.py [--data] SRC DST [THREADS]     # prints the seconds taken

SRC is walked (and with --data read) before the clock starts; DST must not
exist (its parent must).
"""
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import zip_longest


def round_robin(groups):
    """One item from each group in turn."""
    for row in zip_longest(*groups):
        yield from (x for x in row if x is not None)


def main():
    args = sys.argv[1:]
    data = args[:1] == ["--data"]
    if data:
        args = args[1:]
    src, dst = args[0], args[1]
    threads = int(args[2]) if len(args) > 2 else 64
    levels = []   # per depth: {parent rel: [child dir rels]}
    files = {}    # parent rel: [file rels]
    for root, dirs, names in os.walk(src):
        rel = os.path.relpath(root, src)
        depth = 0 if rel == "." else rel.count("/") + 1
        while len(levels) <= depth:
            levels.append({})
        levels[depth][rel] = [os.path.normpath(os.path.join(rel, d)) for d in dirs]
        files[rel] = [os.path.normpath(os.path.join(rel, n)) for n in names]

    def mkdir(rel):
        os.mkdir(os.path.join(dst, rel), 0o755)

    content = {}
    if data:
        for rels in files.values():
            for rel in rels:
                p = os.path.join(src, rel)
                mtime = os.lstat(p).st_mtime_ns
                if os.path.islink(p):
                    content[rel] = (os.readlink(p), mtime)
                else:
                    with open(p, "rb") as f:
                        content[rel] = (f.read(), mtime)
    dir_times = {rel: os.lstat(os.path.join(src, rel)).st_mtime_ns for rel in files}

    def create(rel):
        if data and isinstance(content[rel][0], str):
            target, mtime = content[rel]
            os.symlink(target, os.path.join(dst, rel))
            os.utime(os.path.join(dst, rel), ns=(mtime, mtime), follow_symlinks=False)
            return
        fd = os.open(os.path.join(dst, rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        if data:
            bytes_, mtime = content[rel]
            view = memoryview(bytes_)
            while view:
                view = view[os.write(fd, view):]
            os.utime(fd, ns=(mtime, mtime))
        os.close(fd)

    def dir_time(rel):
        os.utime(os.path.join(dst, rel), ns=(dir_times[rel], dir_times[rel]))

    t0 = time.monotonic()
    os.mkdir(dst, 0o755)
    with ThreadPoolExecutor(threads) as pool:
        for level in levels:
            list(pool.map(mkdir, round_robin(list(level.values()))))
        list(pool.map(create, round_robin(list(files.values()))))
        if data:
            for level in reversed(levels):
                list(pool.map(dir_time, level.keys()))
    print(f"{time.monotonic() - t0:.3f}")


if __name__ == "__main__":
    main()
