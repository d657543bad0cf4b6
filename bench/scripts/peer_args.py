"""What the peer scripts of `cargo xtask bench` share: their command line and the batch check.

Each peer runs in a venv of its own, but both scripts sit beside this file, so Python finds it.
"""

import argparse
import sys


def parse(methods, extra=lambda p: None):
    """The peers' arguments (`methods`: the accepted --method values; `extra` adds a peer's own flags), and the
    image batch shape, checked to split into batches of --batch."""
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--inputs", required=True, help="raw float32 file of N*C*H*W values")
    p.add_argument("--shape", required=True, help="N,C,H,W")
    p.add_argument("--input-name", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--method", choices=methods, required=True)
    extra(p)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    shape = tuple(int(x) for x in a.shape.split(","))
    if shape[0] % a.batch != 0:
        sys.exit(f"batch {a.batch} does not divide {shape[0]} images")
    return a, shape
