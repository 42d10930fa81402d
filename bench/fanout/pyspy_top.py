#!/usr/bin/env python3
"""Top hot spots of a py-spy `--format raw` profile (collapsed stacks: `f1;f2;...;leaf N`).

Self = samples where the function is the leaf; total = samples with the function anywhere
on the stack (counted once per sample). Percentages are of all samples in the file.
Usage: pyspy_top.py PROFILE.txt [--top 25] [--lines]   (--lines: keep line numbers)
"""

import argparse
import re
from collections import Counter

ap = argparse.ArgumentParser()
ap.add_argument("path")
ap.add_argument("--top", type=int, default=25)
ap.add_argument("--lines", action="store_true")
a = ap.parse_args()

LINE = re.compile(r":\d+\)$")


def name(frame: str) -> str:
    frame = frame.strip()
    if not a.lines:
        frame = LINE.sub(")", frame)
    return frame


self_c: Counter[str] = Counter()
total_c: Counter[str] = Counter()
n = 0
for ln in open(a.path):
    ln = ln.rstrip("\n")
    if not ln:
        continue
    stack, _, cnt = ln.rpartition(" ")
    c = int(cnt)
    frames = [name(f) for f in stack.split(";") if f]
    # drop py-spy's thread/process header frames
    frames = [f for f in frames if not f.startswith(("process ", "thread "))]
    if not frames:
        continue
    n += c
    self_c[frames[-1]] += c
    for f in set(frames):
        total_c[f] += c

print(f"samples: {n}")
print("\n| self % | function (file) |\n|---:|---|")
for f, c in self_c.most_common(a.top):
    print(f"| {100 * c / n:.1f} | `{f}` |")
print("\n| total % | function (file) |\n|---:|---|")
for f, c in total_c.most_common(a.top):
    print(f"| {100 * c / n:.1f} | `{f}` |")
