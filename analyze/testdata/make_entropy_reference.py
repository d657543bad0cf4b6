"""Reference thresholds for analyze's entropy calibration. Run once; the output is committed.

    /tmp/pyref/bin/python analyze/testdata/make_entropy_reference.py [HIST...]

An independent, deliberately naive implementation of the KL-divergence threshold search of NVIDIA's
pytorch-quantization / ModelOpt (`_compute_amax_entropy`, num_bits=8, signed, stride 1, start_bin 128),
written from its description:
  - bin 0 is replaced by bin 1's count (suppresses the spike of exact zeros);
  - for each candidate i in [128, n]: P = bins[:i] with all counts of bins[i:] added to P[i-1];
    Q: bins[:i] grouped into 128 levels (bin j -> level floor(128 j / i)), each level's total spread evenly
    over the level's non-empty bins (empty bins stay 0);
  - KL(P || Q) with both normalised (scipy.stats.entropy); the largest i among the minima wins;
  - threshold = i * bin_width (the bin's upper edge).
Histograms: synthetic distributions, plus every 10th tensor of any .hist files given on the command line.
"""
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import entropy

HERE = Path(__file__).parent


def reference_entropy_bin(counts):
    bins = np.array(counts, dtype=np.float64)
    bins[0] = bins[1]
    n = len(bins)
    best_i, best_kl = None, None
    for i in range(128, n + 1):
        p = bins[:i].copy()
        p[i - 1] += bins[i:].sum()
        level = (np.arange(i) * 128) // i
        q = np.zeros(i)
        kept = bins[:i]
        for k in range(128):
            members = (level == k) & (kept != 0)
            cnt = members.sum()
            if cnt:
                q[members] = kept[level == k].sum() / cnt
        kl = entropy(p, q) if q.sum() > 0 else np.inf
        if best_kl is None or kl <= best_kl:
            best_i, best_kl = i, kl
    return best_i


def trim(counts):
    nz = np.nonzero(counts)[0]
    return counts[: nz[-1] + 1] if len(nz) else counts[:1]


def synthetic():
    rng = np.random.default_rng(7)
    cases = []
    for name, data in [
        ("gaussian", np.abs(rng.normal(0, 1, 200000))),
        ("laplace", np.abs(rng.laplace(0, 0.5, 200000))),
        ("relu_gaussian", np.maximum(rng.normal(0.2, 1, 200000), 0)),
        ("gaussian_with_outliers", np.abs(np.concatenate([rng.normal(0, 1, 200000), rng.normal(0, 30, 40)]))),
        ("uniform", rng.uniform(0, 3, 100000)),
        ("bimodal", np.abs(np.concatenate([rng.normal(0, 0.1, 100000), rng.normal(4, 0.2, 5000)]))),
    ]:
        # Same binning as int8kit: 4096 bins over [0, 2^e), 2^e the smallest power of two above the max.
        e = int(np.floor(np.log2(data.max()))) + 1
        width = 2.0 ** e / 4096
        counts = np.bincount(np.floor(data / width).astype(np.int64), minlength=4096)[:4096]
        cases.append((name, counts, width))
    return cases


def from_hist(path):
    h = json.loads(Path(path).read_text())
    out = []
    for t in h["tensors"][::10]:
        e = t["hist"]["range_exp"]
        if e is None:
            continue
        counts = np.array(t["hist"]["counts"] + [0] * (4096 - len(t["hist"]["counts"])))
        out.append((f'{h["model"]["file"]}:{t["name"]}', counts, 2.0 ** e / 4096))
    return out


def main():
    cases = synthetic()
    for p in sys.argv[1:]:
        cases += from_hist(p)
    rows = []
    for name, counts, width in cases:
        counts = trim(np.asarray(counts, dtype=np.int64))
        if len(counts) < 128:
            continue
        i = reference_entropy_bin(counts)
        rows.append(dict(name=name, bin_width=width, counts=[int(c) for c in counts], threshold_bin=int(i),
                         amax=float(i * width)))
        print(name, len(counts), i)
    (HERE / "entropy_reference.json").write_text(json.dumps(dict(generator="make_entropy_reference.py", cases=rows)))


if __name__ == "__main__":
    main()
