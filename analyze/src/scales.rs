//! From a histogram of |x| to a clipping threshold (amax); the INT8 scale is amax / 127.

use histograms::TensorStats;
use serde::{Deserialize, Serialize};

/// How to pick amax from a tensor's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", content = "percentile", rename_all = "lowercase")]
pub enum Method {
    /// Minimum KL divergence, as TensorRT's entropy calibrator (pytorch-quantization's variant).
    Entropy,
    /// Minimum expected squared error of symmetric INT8 quantization.
    Mse,
    /// The given percentile of |x|.
    Percentile(f64),
    /// max |x|.
    Max,
}

impl Method {
    /// The four methods every report lists.
    pub const ALL_DEFAULT: [Method; 4] = [Method::Entropy, Method::Mse, Method::Percentile(99.99), Method::Max];

    /// The method's command-line spelling (`percentile:99.99`).
    pub fn name(&self) -> String {
        match self {
            Method::Entropy => "entropy".into(),
            Method::Mse => "mse".into(),
            Method::Percentile(p) => format!("percentile:{p}"),
            Method::Max => "max".into(),
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "entropy" => Ok(Method::Entropy),
            "mse" => Ok(Method::Mse),
            "max" => Ok(Method::Max),
            "percentile" => Ok(Method::Percentile(99.99)),
            other => match other.strip_prefix("percentile:").map(str::parse::<f64>) {
                Some(Ok(p)) if p > 0.0 && p <= 100.0 => Ok(Method::Percentile(p)),
                Some(_) => Err(format!("'{other}': the percentile must be a number in (0, 100]")),
                None => Err(format!("unknown method '{other}'; use entropy, mse, percentile[:P] or max")),
            },
        }
    }
}

/// The amax used where a tensor has no range (all zeros, or no finite value): any positive scale represents
/// zero exactly, and 1.0 keeps the scale (1/127) a normal number.
pub const ZERO_RANGE_AMAX: f32 = 1.0;

/// Clipping threshold for a tensor. Never zero, never NaN (see [`ZERO_RANGE_AMAX`]).
pub fn amax(stats: &TensorStats, method: Method) -> f32 {
    let max_abs = stats.amax();
    if !(max_abs > 0.0 && max_abs.is_finite()) {
        return ZERO_RANGE_AMAX;
    }
    // Range-only statistics (tensors that are always max-calibrated) have no histogram to search.
    if matches!(method, Method::Max) || stats.max_only {
        return max_abs;
    }
    let Some(_) = stats.hist.range_exp else { return ZERO_RANGE_AMAX };
    let width = stats.hist.bin_width();
    let counts = trimmed(&stats.hist.counts);
    let a = match method {
        Method::Max => return max_abs,
        Method::Entropy => entropy_threshold_bin(counts) as f64 * width,
        Method::Mse => mse_threshold_bin(counts) as f64 * width,
        Method::Percentile(p) => percentile_bin(counts, p) as f64 * width,
    };
    // A threshold never needs to exceed the largest value seen.
    let a = (a as f32).min(max_abs);
    if a > 0.0 && a.is_finite() {
        a
    } else {
        max_abs
    }
}

/// Share of values with |x| above `amax` (clipped by it), from the histogram (bins straddling amax count
/// as clipped in proportion).
pub fn clipped_share(stats: &TensorStats, amax: f32) -> f64 {
    let total = stats.hist.total();
    if total == 0 || stats.hist.range_exp.is_none() || amax >= stats.amax() {
        return 0.0;
    }
    let pos = amax as f64 / stats.hist.bin_width();
    let whole = pos.floor() as usize;
    let counts = &stats.hist.counts;
    if whole >= counts.len() {
        return 0.0;
    }
    let above: u64 = counts[whole + 1..].iter().sum();
    (above as f64 + counts[whole] as f64 * (1.0 - pos.fract())) / total as f64
}

fn trimmed(counts: &[u64]) -> &[u64] {
    let used = counts.iter().rposition(|&c| c != 0).map_or(1, |i| i + 1);
    &counts[..used.max(1)]
}

const LEVELS: usize = 128;
const START_BIN: usize = 128;

/// The KL-divergence threshold search of NVIDIA's pytorch-quantization / ModelOpt (`_compute_amax_entropy`,
/// 8 bits signed, stride 1, start bin 128), returning the bin index `i` whose upper edge is the threshold:
/// bin 0 takes bin 1's count; for each candidate `i`, P is bins[..i] with everything above folded into
/// P[i-1], and Q spreads each of 128 levels' totals (bin j in level floor(128 j / i)) over the level's
/// non-empty bins; the largest i of minimal KL(P||Q) wins.
///
/// Per-level sums come from prefix sums, so a candidate costs O(128) instead of O(i):
/// KL = (1/S) [ sum_j c_j ln c_j - S ln S - sum_k C_k ln(L_k / n_k) + S ln T_i ], with S the grand total,
/// T_i the total of bins[..i], L_k / n_k a level's total / non-empty bins, and C_k the level's P mass.
pub fn entropy_threshold_bin(counts: &[u64]) -> usize {
    let mut bins: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    if bins.len() > 1 {
        bins[0] = bins[1];
    }
    let n = bins.len();
    if n <= START_BIN {
        return n;
    }
    let total: f64 = bins.iter().sum();
    if total == 0.0 {
        return n;
    }
    // Prefix sums over bins: counts, non-empty bins, c ln c.
    let mut cum = vec![0f64; n + 1];
    let mut nonzero = vec![0usize; n + 1];
    let mut clogc = vec![0f64; n + 1];
    for (j, &c) in bins.iter().enumerate() {
        cum[j + 1] = cum[j] + c;
        nonzero[j + 1] = nonzero[j] + (c > 0.0) as usize;
        clogc[j + 1] = clogc[j] + if c > 0.0 { c * c.ln() } else { 0.0 };
    }
    let mut best = (f64::INFINITY, n);
    // Per level: the bin span it had at the last candidate, and ln(L_k / n_k) over it. A level's span moves
    // with i only when one of its rounded edges does (level 0's every 128 candidates, level 127's every one):
    // reusing the logarithm while the span stays gives the same values, at half the logarithms.
    let mut level_ln = [(usize::MAX, usize::MAX, 0f64); LEVELS];
    for i in START_BIN..=n {
        let outliers = total - cum[i];
        let last = bins[i - 1];
        // P[i-1] > 0 with Q[i-1] = 0 (an empty last bin receiving outliers): infinite divergence.
        if last == 0.0 && outliers > 0.0 {
            continue;
        }
        let kept = cum[i];
        if kept == 0.0 {
            continue;
        }
        // sum_j P~_j ln P~_j over bins[..i] with the fold into the last bin.
        let mut p_log_p = clogc[i];
        if outliers > 0.0 {
            let folded = last + outliers;
            p_log_p += folded * folded.ln() - last * last.ln();
        }
        // sum_k C_k ln(L_k / n_k): level k spans bins [ceil(k i / 128), ceil((k+1) i / 128)).
        let mut cross = 0.0;
        for (k, cached) in level_ln.iter_mut().enumerate() {
            let lo = (k * i).div_ceil(LEVELS);
            let hi = ((k + 1) * i).div_ceil(LEVELS);
            if lo >= hi {
                continue;
            }
            let level_total = cum[hi] - cum[lo];
            let level_nonempty = nonzero[hi] - nonzero[lo];
            if level_nonempty == 0 {
                continue;
            }
            if (cached.0, cached.1) != (lo, hi) {
                *cached = (lo, hi, (level_total / level_nonempty as f64).ln());
            }
            let mass = if hi == i { level_total + outliers } else { level_total };
            cross += mass * cached.2;
        }
        let kl = (p_log_p - total * total.ln() - cross + total * kept.ln()) / total;
        // `<=` keeps the largest i among equal minima; a relative tolerance absorbs the rounding of the
        // prefix-sum form, so that exact ties in the naive form stay ties here.
        if kl <= best.0 + 1e-12 * best.0.abs().max(1e-300) {
            best = (kl, i);
        }
    }
    best.1
}

/// Minimum expected squared error of symmetric INT8 quantization with threshold at a bin's upper edge:
/// values above the threshold cost their clipping error (at their bin centre); values below cost the
/// rounding error of a uniform quantizer, step^2 / 12 with step = threshold / 127. Candidates from bin 128.
pub fn mse_threshold_bin(counts: &[u64]) -> usize {
    let n = counts.len();
    if n <= START_BIN {
        return n;
    }
    // Suffix sums of c, c x, c x^2 with x the bin centre in bin units.
    let mut s0 = vec![0f64; n + 1];
    let mut s1 = vec![0f64; n + 1];
    let mut s2 = vec![0f64; n + 1];
    for j in (0..n).rev() {
        let c = counts[j] as f64;
        let x = j as f64 + 0.5;
        s0[j] = s0[j + 1] + c;
        s1[j] = s1[j + 1] + c * x;
        s2[j] = s2[j + 1] + c * x * x;
    }
    let mut best = (f64::INFINITY, n);
    for i in START_BIN..=n {
        let t = i as f64;
        let below = s0[0] - s0[i];
        let step = t / 127.0;
        // sum over clipped bins of c (x - t)^2 = S2 - 2 t S1 + t^2 S0.
        let clip = s2[i] - 2.0 * t * s1[i] + t * t * s0[i];
        let err = clip + below * step * step / 12.0;
        if err < best.0 {
            best = (err, i);
        }
    }
    best.1
}

/// The first bin whose cumulative share reaches `p` percent; the threshold is its upper edge.
pub fn percentile_bin(counts: &[u64], p: f64) -> usize {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return counts.len();
    }
    let target = p / 100.0 * total as f64;
    let mut acc = 0u64;
    for (j, &c) in counts.iter().enumerate() {
        acc += c;
        if acc as f64 >= target {
            return j + 1;
        }
    }
    counts.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        counts: Vec<u64>,
        threshold_bin: usize,
    }

    #[derive(serde::Deserialize)]
    struct Reference {
        cases: Vec<Case>,
    }

    #[test]
    fn entropy_matches_the_python_reference_within_one_bin() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/entropy_reference.json");
        let reference: Reference = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(reference.cases.len() >= 20);
        for case in &reference.cases {
            let ours = entropy_threshold_bin(&case.counts);
            let diff = ours.abs_diff(case.threshold_bin);
            assert!(diff <= 1, "{}: ours {ours}, reference {}", case.name, case.threshold_bin);
        }
    }

    #[test]
    fn percentile_and_mse_behave() {
        let mut counts = vec![0u64; 1000];
        counts[..900].iter_mut().for_each(|c| *c = 10);
        counts[999] = 1; // one outlier far out
        assert_eq!(percentile_bin(&counts, 100.0), 1000);
        // 9001 values: the median (4500.5th) lies in bin 450, whose upper edge is 451.
        assert_eq!(percentile_bin(&counts, 50.0), 451);
        // MSE clips the lone outlier rather than coarsening the step for everything else.
        let m = mse_threshold_bin(&counts);
        assert!((880..=1000).contains(&m) && m < 1000, "{m}");
    }

    #[test]
    fn methods_parse_and_zero_ranges_get_a_safe_amax() {
        assert_eq!("percentile:99.9".parse::<Method>().unwrap(), Method::Percentile(99.9));
        assert!("percentile:101".parse::<Method>().is_err());
        assert!("kl".parse::<Method>().is_err());
        let mut zeros = TensorStats::default();
        zeros.add(&[0.0; 100]);
        for m in Method::ALL_DEFAULT {
            assert_eq!(amax(&zeros, m), ZERO_RANGE_AMAX);
        }
        let mut s = TensorStats::default();
        s.add(&[-3.0, 1.0, 2.0]);
        assert_eq!(amax(&s, Method::Max), 3.0);
    }
}
