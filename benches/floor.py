#!/usr/bin/env python3
"""The floor of a tree shape: the least time a copier can take to make a
tree's names on a share, here made empty by many threads. Directories are
made level by level and files after them, each level's work handed out
round-robin over the parent directories, so every directory has creates in
flight at once (the kernel serialises creates within one directory, not
across directories).

    benches/floor.py SRC DST [THREADS]     # prints the seconds taken

SRC is walked before the clock starts; DST must not exist (its parent must).
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
    src, dst = sys.argv[1], sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 32
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

    def create(rel):
        os.close(os.open(os.path.join(dst, rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

    t0 = time.monotonic()
    os.mkdir(dst, 0o755)
    with ThreadPoolExecutor(threads) as pool:
        for level in levels:
            list(pool.map(mkdir, round_robin(list(level.values()))))
        list(pool.map(create, round_robin(list(files.values()))))
    print(f"{time.monotonic() - t0:.3f}")


if __name__ == "__main__":
    main()
