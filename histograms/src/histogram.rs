//! Per-tensor statistics whose result does not depend on batch size, batch order or thread count.
//!
//! The |x| histogram has [`BINS`] equal bins over `[0, 2^e)`, where `2^e` is the smallest power of two above
//! the largest |x| seen so far. A value's bin is `floor(|x| * BINS / 2^e)`; multiplying by a power of two is
//! exact in floating point, so the bin is computed without rounding. Doubling the range maps bin `i` to
//! `i / 2` (pair merge), which is exactly the bin the value would have had at the larger range. Hence any
//! split of the data into chunks, histogrammed separately and merged in any order, gives the same counts as
//! one pass over all of it at the final range. Min, max and counts are exact too, so the whole
//! [`TensorStats`] is a pure function of the multiset of values.

use serde::{Deserialize, Serialize};

/// Bins over the power-of-two range. The maximum lies in the upper half of the range, so at least
/// `BINS / 2` = 2048 bins cover `[0, max]`: as fine as TensorRT's entropy calibration needs, or finer.
pub const BINS: usize = 4096;
const LOG2_BINS: i32 = 12;

/// Histogram of |x| over `[0, 2^range_exp)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbsHistogram {
    /// `None` until a non-zero value is seen; zeros always fall in bin 0.
    pub range_exp: Option<i32>,
    /// Always `BINS` long in memory; serialized without its trailing zeros.
    #[serde(with = "trimmed_counts")]
    pub counts: Vec<u64>,
}

impl Default for AbsHistogram {
    fn default() -> Self {
        AbsHistogram { range_exp: None, counts: vec![0; BINS] }
    }
}

/// The smallest `e` with `a < 2^e`, for finite `a > 0`.
pub fn range_exp_for(a: f32) -> i32 {
    let bits = a.to_bits() & 0x7fff_ffff;
    let biased = (bits >> 23) as i32;
    if biased == 0 {
        // Subnormal: a = m * 2^-149 with m < 2^23; e = bit length of m - 149.
        let m = bits & 0x007f_ffff;
        32 - m.leading_zeros() as i32 - 149
    } else {
        // Normal: a in [2^(biased-127), 2^(biased-126)).
        biased - 126
    }
}

/// `2^k` as f32 for the bin multiplier; exact for k in -126..=127.
fn pow2(k: i32) -> f32 {
    (k as f64).exp2() as f32
}

impl AbsHistogram {
    /// Upper edge of the histogram range (`2^range_exp`), or 0 when only zeros were seen.
    pub fn range(&self) -> f64 {
        self.range_exp.map(|e| (e as f64).exp2()).unwrap_or(0.0)
    }

    /// Width of one bin.
    pub fn bin_width(&self) -> f64 {
        self.range() / BINS as f64
    }

    /// Grows the range to `2^e` (if larger) by pair-merging bins.
    pub fn grow_to(&mut self, e: i32) {
        let Some(cur) = self.range_exp else {
            // Only zeros so far: they stay in bin 0 at any range.
            self.range_exp = Some(e);
            return;
        };
        if e <= cur {
            return;
        }
        let steps = (e - cur) as u32;
        if steps > LOG2_BINS as u32 {
            let total: u64 = self.counts.iter().sum();
            self.counts.iter_mut().for_each(|c| *c = 0);
            self.counts[0] = total;
        } else {
            let mut merged = vec![0u64; BINS];
            for (i, c) in self.counts.iter().enumerate() {
                merged[i >> steps] += c;
            }
            self.counts = merged;
        }
        self.range_exp = Some(e);
    }

    /// Adds finite values whose |x| is below the current range, counting into `scratch` ([`TABLES`] interleaved
    /// u32 tables, which break the store-to-load dependency on runs of equal bins).
    fn add_in_range(&mut self, values: &[f32], scratch: &mut Scratch) {
        let Some(e) = self.range_exp else {
            self.counts[0] += values.len() as u64;
            return;
        };
        let shift = LOG2_BINS - e;
        if !(-126..=126).contains(&shift) {
            // 2^shift is not a normal float32 (ranges below 2^-114 or above 2^138): bin in f64, where the
            // multiplication is still exact.
            let k = (shift as f64).exp2();
            for &x in values {
                let i = ((x.abs() as f64 * k) as usize).min(BINS - 1);
                scratch.tables[i] += 1;
            }
        } else {
            kernels::bin(values, pow2(shift), &mut scratch.tables);
        }
        self.counted(values.len(), scratch);
    }

    /// The multiplier that maps |x| to its bin at the current range, where the SIMD kernels can use it: `None`
    /// before the first non-zero value and for ranges whose multiplier is not a normal float32.
    fn bin_multiplier(&self) -> Option<f32> {
        let shift = LOG2_BINS - self.range_exp?;
        (-126..=126).contains(&shift).then(|| pow2(shift))
    }

    /// Notes `n` values counted into `scratch`, flushing well before any u32 entry could overflow.
    fn counted(&mut self, n: usize, scratch: &mut Scratch) {
        scratch.pending += n as u64;
        if scratch.pending >= 1 << 30 {
            self.flush(scratch);
        }
    }

    fn flush(&mut self, scratch: &mut Scratch) {
        if scratch.pending == 0 {
            return;
        }
        let (t0, t1) = scratch.tables.split_at(BINS);
        for ((c, a), b) in self.counts.iter_mut().zip(t0).zip(t1) {
            *c += *a as u64 + *b as u64;
        }
        scratch.tables.iter_mut().for_each(|t| *t = 0);
        scratch.pending = 0;
    }

    /// Adds another histogram's counts (any range).
    pub fn merge(&mut self, other: &AbsHistogram) {
        if let Some(e) = other.range_exp {
            self.grow_to(e);
        }
        let mut o = other.clone();
        if let Some(e) = self.range_exp {
            o.grow_to(e);
        }
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
    }

    /// Number of values counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Number of values counted, or `None` when the counts add up beyond `u64` (only an edited file can hold
    /// such counts; a wrapped sum would pass a check it should fail).
    pub fn checked_total(&self) -> Option<u64> {
        self.counts.iter().try_fold(0u64, |sum, &c| sum.checked_add(c))
    }
}

mod trimmed_counts {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(counts: &[u64], s: S) -> Result<S::Ok, S::Error> {
        let used = counts.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
        s.collect_seq(&counts[..used])
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        let mut counts = Vec::<u64>::deserialize(d)?;
        if counts.len() > super::BINS {
            return Err(D::Error::custom(format!("{} bins, more than {}", counts.len(), super::BINS)));
        }
        counts.resize(super::BINS, 0);
        Ok(counts)
    }
}

/// Counting tables per thread: value `j` of a chunk counts into table `j % TABLES`. Two, not more: two u32
/// tables (32 KB) stay in a 32 KB L1 cache beside the values being binned, and binned 35 % faster than four
/// (64 KB) on this machine's Zen 4; one table is as fast on spread values and 1.8x slower on runs of one bin
/// (ReLU's zeros), where each count waits for the last.
const TABLES: usize = 2;

/// Per-thread counting tables, reused across calls.
struct Scratch {
    tables: Vec<u32>,
    pending: u64,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> =
        std::cell::RefCell::new(Scratch { tables: vec![0; TABLES * BINS], pending: 0 });
}

/// The hot loops: a range scan, the binning scatter, and both in one pass over the values. AVX2 where the CPU
/// has it (checked at run time), plain Rust otherwise; both give identical results.
mod kernels {
    use super::{BINS, TABLES};

    /// (min, max, count of non-finite values). Min and max are only meaningful when the count is 0.
    pub fn scan(v: &[f32]) -> (f32, f32, u32) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked above).
            return unsafe { avx2::scan(v) };
        }
        scan_scalar(v)
    }

    pub fn scan_scalar(v: &[f32]) -> (f32, f32, u32) {
        let (mut lo, mut hi, mut nf) = (f32::INFINITY, f32::NEG_INFINITY, 0u32);
        for &x in v {
            lo = lo.min(x);
            hi = hi.max(x);
            nf += (!x.is_finite()) as u32;
        }
        (lo, hi, nf)
    }

    /// The bin of `x` at multiplier `k`: `min(floor(|x| * k), BINS - 1)`; NaN and infinities land in the last
    /// bin (only [`unbin`] ever sees them there).
    fn bin_of(x: f32, k: f32) -> usize {
        // f32::min returns the other operand for NaN, as the SIMD kernel's min does.
        ((x.abs() * k).min((BINS - 1) as f32) as usize).min(BINS - 1)
    }

    /// Adds 1 to table `j % TABLES` at [`bin_of`] the j-th value.
    pub fn bin(v: &[f32], k: f32, tables: &mut [u32]) {
        assert_eq!(tables.len(), TABLES * BINS);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked above); tables has TABLES * BINS entries (asserted).
            unsafe { avx2::scan_and_bin(v, k, tables) };
            return;
        }
        bin_scalar(v, k, tables)
    }

    pub fn bin_scalar(v: &[f32], k: f32, tables: &mut [u32]) {
        for (j, &x) in v.iter().enumerate() {
            tables[(j % TABLES) * BINS + bin_of(x, k)] += 1;
        }
    }

    /// [`scan`] and [`bin`] in one pass over `v`, which reads it once: the values are binned at multiplier
    /// `k` before their range is known, so the caller takes the counts back with [`unbin`] when the range
    /// turns out to grow (or a value is not finite).
    pub fn scan_and_bin(v: &[f32], k: f32, tables: &mut [u32]) -> (f32, f32, u32) {
        assert_eq!(tables.len(), TABLES * BINS);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked above); tables has TABLES * BINS entries (asserted).
            return unsafe { avx2::scan_and_bin(v, k, tables) };
        }
        bin_scalar(v, k, tables);
        scan_scalar(v)
    }

    /// Whether bin 0 is likely to hold a third of `v` or more (ReLU outputs: their zeros): judged on its first
    /// 64 values at multiplier `k`. Only the speed depends on it; the counts are the same either way.
    pub fn mostly_bin_zero(v: &[f32], k: f32) -> bool {
        let head = &v[..v.len().min(64)];
        !head.is_empty() && 3 * head.iter().filter(|x| x.abs() * k < 1.0).count() >= head.len()
    }

    /// Takes back what [`scan_and_bin`] (or [`bin`]) counted for `v` at `k`: the same bins, minus 1 each.
    pub fn unbin(v: &[f32], k: f32, tables: &mut [u32]) {
        for (j, &x) in v.iter().enumerate() {
            let t = &mut tables[(j % TABLES) * BINS + bin_of(x, k)];
            *t = t.wrapping_sub(1);
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use super::BINS;
        use std::arch::x86_64::*;

        #[target_feature(enable = "avx2")]
        pub unsafe fn scan(v: &[f32]) -> (f32, f32, u32) {
            let mut lo = _mm256_set1_ps(f32::INFINITY);
            let mut hi = _mm256_set1_ps(f32::NEG_INFINITY);
            let exp_mask = _mm256_set1_epi32(0x7f80_0000);
            let mut non_finite = _mm256_setzero_si256();
            let mut chunks = v.chunks_exact(8);
            for c in &mut chunks {
                let x = _mm256_loadu_ps(c.as_ptr());
                lo = _mm256_min_ps(lo, x);
                hi = _mm256_max_ps(hi, x);
                // All exponent bits set: infinity or NaN (counted as -1 per lane by the compare).
                let e = _mm256_and_si256(_mm256_castps_si256(x), exp_mask);
                non_finite = _mm256_sub_epi32(non_finite, _mm256_cmpeq_epi32(e, exp_mask));
            }
            lanes(lo, hi, non_finite, super::scan_scalar(chunks.remainder()))
        }

        /// The eight lanes' min, max and non-finite count folded with the remainder's `(lo, hi, nf)`.
        #[target_feature(enable = "avx2")]
        unsafe fn lanes(lo: __m256, hi: __m256, non_finite: __m256i, rest: (f32, f32, u32)) -> (f32, f32, u32) {
            let (mut l, mut h, mut n) = ([0f32; 8], [0f32; 8], [0u32; 8]);
            _mm256_storeu_ps(l.as_mut_ptr(), lo);
            _mm256_storeu_ps(h.as_mut_ptr(), hi);
            _mm256_storeu_si256(n.as_mut_ptr() as *mut __m256i, non_finite);
            let (rl, rh, rn) = rest;
            let lo = l.iter().copied().fold(rl, f32::min);
            let hi = h.iter().copied().fold(rh, f32::max);
            (lo, hi, n.iter().sum::<u32>() + rn)
        }

        /// Adds 1 at each of `indices` in `t`.
        ///
        /// # Safety
        /// Every index is below the length of the tables `t` points to.
        #[inline(always)]
        unsafe fn count(indices: &[u32], t: *mut u32) {
            for &i in indices {
                *t.add(i as usize) += 1;
            }
        }

        /// For each mask of the lanes to keep, their indices packed to the front, one byte each: the permutation
        /// that moves the kept lanes' bins together (2 KB, so it stays in L1 beside the counting tables).
        static PACK: [u64; 256] = {
            let mut table = [0u64; 256];
            let mut mask = 0;
            while mask < 256 {
                let (mut packed, mut kept, mut lane) = (0u64, 0, 0);
                while lane < 8 {
                    if mask & (1 << lane) != 0 {
                        packed |= (lane as u64) << (8 * kept);
                        kept += 1;
                    }
                    lane += 1;
                }
                table[mask] = packed;
                mask += 1;
            }
            table
        };

        /// Bins `v` into `tables` (value j into table j % TABLES) and scans its range: the scan costs almost
        /// nothing beside the scatter, which bounds the loop. Where bin 0 takes a large share of the values
        /// (ReLU's zeros), each count of it waits for the one before; then bin 0 is counted in the vector
        /// registers and only the other bins go to the scalar loop (values in L2, this Xeon: ReLU outputs with
        /// half zeros 0.64 -> 0.37 ns per value, but values rarely in bin 0 0.38 -> 0.51, hence the choice).
        #[target_feature(enable = "avx2")]
        pub unsafe fn scan_and_bin(v: &[f32], k: f32, tables: &mut [u32]) -> (f32, f32, u32) {
            if super::mostly_bin_zero(v, k) {
                scan_and_bin_with::<true>(v, k, tables)
            } else {
                scan_and_bin_with::<false>(v, k, tables)
            }
        }

        #[target_feature(enable = "avx2")]
        unsafe fn scan_and_bin_with<const ZEROS_IN_REGISTERS: bool>(
            v: &[f32],
            k: f32,
            tables: &mut [u32],
        ) -> (f32, f32, u32) {
            let scale = _mm256_set1_ps(k);
            let cap = _mm256_set1_ps((BINS - 1) as f32);
            let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
            let exp_mask = _mm256_set1_epi32(0x7f80_0000);
            // Lane j's table offset (TABLES = 2: even lanes table 0, odd lanes table 1), so that value j of the
            // chunk counts into table j % TABLES as in the scalar kernel.
            let table = _mm256_setr_epi32(0, BINS as i32, 0, BINS as i32, 0, BINS as i32, 0, BINS as i32);
            let mut lo = _mm256_set1_ps(f32::INFINITY);
            let mut hi = _mm256_set1_ps(f32::NEG_INFINITY);
            let mut non_finite = _mm256_setzero_si256();
            // Per lane, the values of bin 0 counted in the register (minus one per value, as compares give).
            let mut bin_zero = _mm256_setzero_si256();
            // The bins (with their table offset) of up to 1024 values at a time, stored as a vector and counted
            // by a scalar loop: on Intel Xeons this ran 20-30 % faster than taking the lanes out of the vector
            // register one by one (`pextrq`), which bound the loop there. Eight spare entries take the last
            // vector store when packed lanes leave the buffer short of full.
            let mut indices = [0u32; 1024 + 8];
            let mut filled = 0;
            let mut chunks = v.chunks_exact(8);
            let t = tables.as_mut_ptr();
            for c in &mut chunks {
                let raw = _mm256_loadu_ps(c.as_ptr());
                lo = _mm256_min_ps(lo, raw);
                hi = _mm256_max_ps(hi, raw);
                let e = _mm256_and_si256(_mm256_castps_si256(raw), exp_mask);
                non_finite = _mm256_sub_epi32(non_finite, _mm256_cmpeq_epi32(e, exp_mask));
                // min(|x| * k, BINS - 1): NaN gives the cap (the second operand), like the scalar bin_of.
                let x = _mm256_and_ps(raw, abs_mask);
                let bins = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_mul_ps(x, scale), cap));
                let i = _mm256_add_epi32(bins, table);
                if ZEROS_IN_REGISTERS {
                    let zero = _mm256_cmpeq_epi32(bins, _mm256_setzero_si256());
                    bin_zero = _mm256_sub_epi32(bin_zero, zero);
                    let keep = !(_mm256_movemask_ps(_mm256_castsi256_ps(zero)) as u32) & 0xff;
                    let order = _mm_loadl_epi64(PACK.as_ptr().add(keep as usize) as *const __m128i);
                    let packed = _mm256_permutevar8x32_epi32(i, _mm256_cvtepu8_epi32(order));
                    _mm256_storeu_si256(indices.as_mut_ptr().add(filled) as *mut __m256i, packed);
                    filled += keep.count_ones() as usize;
                } else {
                    _mm256_storeu_si256(indices.as_mut_ptr().add(filled) as *mut __m256i, i);
                    filled += 8;
                }
                if filled >= 1024 {
                    count(&indices[..filled], t);
                    filled = 0;
                }
            }
            if ZEROS_IN_REGISTERS {
                let mut lanes = [0u32; 8];
                _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, bin_zero);
                *t += lanes[0] + lanes[2] + lanes[4] + lanes[6];
                *t.add(BINS) += lanes[1] + lanes[3] + lanes[5] + lanes[7];
            }
            count(&indices[..filled], t);
            // The remainder starts at a multiple of 8, so its value j is the chunk's (j + 8m): same table.
            let rest = chunks.remainder();
            super::bin_scalar(rest, k, tables);
            lanes(lo, hi, non_finite, super::scan_scalar(rest))
        }
    }
}

/// Everything `calibrate` keeps about one activation tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TensorStats {
    /// Finite values seen.
    pub count: u64,
    /// Smallest finite value (`None` when no finite value was seen).
    pub min: Option<f32>,
    /// Largest finite value, `None` before the first.
    pub max: Option<f32>,
    /// NaN values seen.
    pub nan: u64,
    /// +Inf values seen.
    pub pos_inf: u64,
    /// -Inf values seen.
    pub neg_inf: u64,
    /// Histogram of |x| over the finite values; empty when `max_only`.
    pub hist: AbsHistogram,
    /// Only the range is kept (count, min, max, non-finite counts), no histogram: the tensor is always
    /// max-calibrated (the image, attention probabilities), so binning it would be work nobody reads.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub max_only: bool,
}

impl TensorStats {
    /// Statistics that keep the range only (see [`TensorStats::max_only`]).
    pub fn range_only() -> TensorStats {
        TensorStats { max_only: true, ..Default::default() }
    }

    /// These statistics with the histogram dropped: exactly what [`TensorStats::range_only`] gives for the
    /// same values.
    pub fn into_range_only(self) -> TensorStats {
        TensorStats { hist: AbsHistogram::default(), max_only: true, ..self }
    }

    /// Largest finite |x|, or 0.
    pub fn amax(&self) -> f32 {
        match (self.min, self.max) {
            (Some(lo), Some(hi)) => lo.abs().max(hi.abs()),
            _ => 0.0,
        }
    }

    fn note_range(&mut self, lo: f32, hi: f32, n: u64) {
        // -0.0 and 0.0 compare equal, so which one min/max keeps would depend on order: store +0.0.
        let (lo, hi) = (lo + 0.0, hi + 0.0);
        self.count += n;
        self.min = Some(self.min.map_or(lo, |m| m.min(lo)));
        self.max = Some(self.max.map_or(hi, |m| m.max(hi)));
        let a = lo.abs().max(hi.abs());
        if a > 0.0 && !self.max_only {
            self.hist.grow_to(range_exp_for(a));
        }
    }

    /// Adds a chunk of values. NaN and infinities are counted and left out of everything else.
    pub fn add(&mut self, values: &[f32]) {
        SCRATCH.with(|s| self.add_with(values, &mut s.borrow_mut()));
    }

    fn add_with(&mut self, values: &[f32], scratch: &mut Scratch) {
        // Blocks small enough to stay in L1 between the range scan and the binning pass.
        for block in values.chunks(4096) {
            // The common case, once the range has settled: every value finite and within it. Binned and scanned
            // in one pass, and taken back when the block turns out not to be that case (rare: the range grows
            // over the first batches only).
            if let (false, Some(k)) = (self.max_only, self.hist.bin_multiplier()) {
                let (lo, hi, non_finite) = kernels::scan_and_bin(block, k, &mut scratch.tables);
                if non_finite == 0 && !self.range_grows(lo, hi) {
                    self.note_range(lo, hi, block.len() as u64);
                    self.hist.counted(block.len(), scratch);
                    continue;
                }
                kernels::unbin(block, k, &mut scratch.tables);
            }
            let (lo, hi, non_finite) = kernels::scan(block);
            if non_finite == 0 && self.max_only {
                self.note_range(lo, hi, block.len() as u64);
                continue;
            }
            if non_finite == 0 {
                if self.range_grows(lo, hi) {
                    self.hist.flush(scratch);
                }
                self.note_range(lo, hi, block.len() as u64);
                self.hist.add_in_range(block, scratch);
                continue;
            }
            let finite: Vec<f32> = block
                .iter()
                .copied()
                .filter(|x| {
                    if x.is_nan() {
                        self.nan += 1;
                    } else if *x == f32::INFINITY {
                        self.pos_inf += 1;
                    } else if *x == f32::NEG_INFINITY {
                        self.neg_inf += 1;
                    }
                    x.is_finite()
                })
                .collect();
            if finite.is_empty() {
                continue;
            }
            let (lo, hi, _) = kernels::scan(&finite);
            if self.max_only {
                self.note_range(lo, hi, finite.len() as u64);
                continue;
            }
            if self.range_grows(lo, hi) {
                self.hist.flush(scratch);
            }
            self.note_range(lo, hi, finite.len() as u64);
            self.hist.add_in_range(&finite, scratch);
        }
        self.hist.flush(scratch);
    }

    /// Whether values in `[lo, hi]` would widen the histogram range (pending counts must be flushed first,
    /// since they were binned at the old range).
    fn range_grows(&self, lo: f32, hi: f32) -> bool {
        let a = lo.abs().max(hi.abs());
        a > 0.0 && self.hist.range_exp.is_none_or(|e| range_exp_for(a) > e)
    }

    /// Values seen, NaN and Inf included; `None` beyond `u64`.
    pub fn elements(&self) -> Option<u64> {
        self.count.checked_add(self.nan)?.checked_add(self.pos_inf)?.checked_add(self.neg_inf)
    }

    /// Combines statistics of two disjoint sets of values.
    pub fn merge(&mut self, other: &TensorStats) {
        self.count += other.count;
        self.nan += other.nan;
        self.pos_inf += other.pos_inf;
        self.neg_inf += other.neg_inf;
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if self.max_only || other.max_only {
            self.max_only = true;
            self.hist = AbsHistogram::default();
        } else {
            self.hist.merge(&other.hist);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn range_exp_is_the_smallest_power_of_two_above() {
        for (a, e) in [(1.0f32, 1), (0.999, 0), (0.5, 0), (3.0, 2), (4.0, 3), (f32::MAX, 128), (1e-45, -148)] {
            assert_eq!(range_exp_for(a), e, "{a}");
            assert!((a as f64) < (e as f64).exp2() && (a as f64) >= ((e - 1) as f64).exp2(), "{a}");
        }
    }

    #[test]
    fn values_land_in_the_right_bins() {
        let mut s = TensorStats::default();
        s.add(&[0.0, -0.0, 1.0, -1.5, 0.25]);
        // max |x| = 1.5 -> range [0, 2), bin width 2/4096.
        assert_eq!(s.hist.range_exp, Some(1));
        assert_eq!(s.hist.counts[0], 2);
        assert_eq!(s.hist.counts[2048], 1); // 1.0
        assert_eq!(s.hist.counts[3072], 1); // 1.5
        assert_eq!(s.hist.counts[512], 1); // 0.25
        assert_eq!((s.min, s.max, s.count), (Some(-1.5), Some(1.0), 5));
    }

    #[test]
    fn non_finite_values_are_counted_and_excluded() {
        let mut s = TensorStats::default();
        s.add(&[f32::NAN, 2.0, f32::INFINITY, f32::NEG_INFINITY, -3.0, f32::NAN]);
        assert_eq!((s.nan, s.pos_inf, s.neg_inf, s.count), (2, 1, 1, 2));
        assert_eq!((s.min, s.max), (Some(-3.0), Some(2.0)));
        assert_eq!(s.hist.total(), 2);
        let mut all_bad = TensorStats::default();
        all_bad.add(&[f32::NAN]);
        assert_eq!((all_bad.min, all_bad.count, all_bad.amax()), (None, 0, 0.0));
    }

    #[test]
    fn tiny_and_huge_ranges_bin_like_the_direct_formula() {
        // Found by the property test: 2^(12 - e) overflows float32 for subnormal maxima.
        for v in [vec![1e-42f32, 3e-43, 0.0], vec![1e-40, -2e-39], vec![3e38, -1e38, 2.0]] {
            let s = stats_of(&[&v]);
            let e = s.hist.range_exp.unwrap();
            for x in &v {
                let b = ((x.abs() as f64) / (e as f64).exp2() * BINS as f64).floor() as usize;
                assert!(s.hist.counts[b] > 0, "{x} not in bin {b}");
            }
        }
    }

    #[test]
    fn signed_zeros_do_not_make_results_order_dependent() {
        let a = bytes(&stats_of(&[&[0.0, -0.0], &[-0.0]]));
        let b = bytes(&stats_of(&[&[-0.0], &[0.0, -0.0]]));
        let c = bytes(&stats_of(&[&[-0.0, 0.0, -0.0]]));
        assert!(a == b && a == c, "signed zeros changed the serialized statistics");
    }

    #[test]
    fn simd_and_scalar_kernels_agree() {
        let v: Vec<f32> = (0..10_007).map(|i| ((i * 7919) % 10007) as f32 / 37.0 - 100.0).collect();
        assert_eq!(kernels::scan(&v), kernels::scan_scalar(&v));
        let mut with_nan = v.clone();
        with_nan[5000] = f32::NAN;
        with_nan[17] = f32::NEG_INFINITY;
        assert_eq!(kernels::scan(&with_nan).2, 2);
        let (mut a, mut b) = (vec![0u32; TABLES * BINS], vec![0u32; TABLES * BINS]);
        kernels::bin(&v, 8.0, &mut a);
        kernels::bin_scalar(&v, 8.0, &mut b);
        assert_eq!(a, b);
        let mut fused = vec![0u32; TABLES * BINS];
        assert_eq!(kernels::scan_and_bin(&v, 8.0, &mut fused), kernels::scan_scalar(&v));
        assert_eq!(fused, b);
    }

    /// Blocks where bin 0 holds many values (ReLU outputs) take the kernel's other path; it counts the same,
    /// also when the block's start misjudges the rest of it.
    #[test]
    fn blocks_of_mostly_zeros_count_as_the_scalar_kernel_does() {
        let wave = |i: usize| ((i * 7919) % 10007) as f32 / 37.0 - 100.0;
        let relu: Vec<f32> = (0..10_007).map(|i| wave(i).max(0.0)).collect();
        let zeros_first: Vec<f32> = (0..4099).map(|i| if i < 64 { 0.0 } else { wave(i) }).collect();
        let zeros_after: Vec<f32> = (0..4099).map(|i| if i < 64 { wave(i) } else { 0.0 }).collect();
        // Values just below and above the first bin's edge (1/8 at multiplier 8), and -0.0.
        let edge: Vec<f32> = (0..1001).map(|i| [0.124_999_99, 0.125, -0.0, 1e-30, -0.124_999_99][i % 5]).collect();
        let cases = [
            ("relu", &relu, true),
            ("zeros first", &zeros_first, true),
            ("zeros after", &zeros_after, false),
            ("edge", &edge, true),
        ];
        for (name, v, mostly_zeros) in cases {
            assert_eq!(kernels::mostly_bin_zero(v, 8.0), mostly_zeros, "{name}");
            let (mut simd, mut scalar) = (vec![0u32; TABLES * BINS], vec![0u32; TABLES * BINS]);
            assert_eq!(kernels::scan_and_bin(v, 8.0, &mut simd), kernels::scan_scalar(v), "{name}");
            kernels::bin_scalar(v, 8.0, &mut scalar);
            assert_eq!(simd, scalar, "{name}");
            assert!(simd[0] > 0 && simd[BINS] > 0, "{name}: both tables count bin 0");
            kernels::unbin(v, 8.0, &mut simd);
            assert!(simd.iter().all(|&c| c == 0), "{name}: unbinning takes back what was binned");
        }
    }

    #[test]
    fn unbinning_takes_back_exactly_what_was_binned() {
        // Values out of range, NaN and infinities included: the fused pass bins them before their range is known.
        let mut v: Vec<f32> = (0..4099).map(|i| ((i * 7919) % 4099) as f32 / 13.0 - 150.0).collect();
        v[7] = f32::NAN;
        v[100] = f32::INFINITY;
        v[4098] = f32::NEG_INFINITY;
        let before: Vec<u32> = (0..TABLES * BINS).map(|i| (i % 7) as u32).collect();
        let mut tables = before.clone();
        kernels::scan_and_bin(&v, 64.0, &mut tables);
        assert_ne!(tables, before);
        kernels::unbin(&v, 64.0, &mut tables);
        assert_eq!(tables, before);
    }

    #[test]
    fn the_large_value_path_counts_like_the_small_one() {
        let values: Vec<f32> = (0..200_003).map(|i| ((i * 7919) % 10007) as f32 / 997.0 - 5.0).collect();
        let mut big = TensorStats::default();
        big.add(&values);
        let mut small = TensorStats::default();
        for c in values.chunks(1000) {
            small.add(c);
        }
        assert_eq!(big, small);
    }

    fn values() -> impl Strategy<Value = Vec<f32>> {
        // Mixed magnitudes, zeros, the odd NaN/inf, subnormals: ranges grow many times over a stream.
        let v = prop_oneof![
            8 => -1e3f32..1e3,
            4 => -1e-3f32..1e-3,
            2 => Just(0.0f32),
            2 => Just(-0.0f32),
            1 => -1e30f32..1e30,
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(1e-42f32),
        ];
        prop::collection::vec(v, 0..3000)
    }

    /// Serialized form: what must be identical (it also tells -0.0 from 0.0, which `==` does not).
    fn bytes(s: &TensorStats) -> String {
        serde_json::to_string(s).unwrap()
    }

    fn stats_of(chunks: &[&[f32]]) -> TensorStats {
        let mut s = TensorStats::default();
        for c in chunks {
            s.add(c);
        }
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Any split into batches gives the same statistics as one pass.
        #[test]
        fn batch_size_does_not_matter(v in values(), split in 1usize..500) {
            let whole = stats_of(&[&v]);
            let chunks: Vec<&[f32]> = v.chunks(split).collect();
            prop_assert_eq!(bytes(&whole), bytes(&stats_of(&chunks)));
        }

        /// Histogramming parts separately (as threads would) and merging in any order is exact.
        #[test]
        fn merge_order_does_not_matter(v in values(), cut1 in 0usize..3000, cut2 in 0usize..3000) {
            let a = cut1.min(v.len());
            let b = cut2.min(v.len()).max(a);
            let parts = [&v[..a], &v[a..b], &v[b..]];
            let whole = stats_of(&[&v]);
            let mut fwd = TensorStats::default();
            for p in parts { fwd.merge(&stats_of(&[p])); }
            let mut rev = TensorStats::default();
            for p in parts.iter().rev() { rev.merge(&stats_of(&[p])); }
            prop_assert_eq!(bytes(&whole), bytes(&fwd));
            prop_assert_eq!(bytes(&whole), bytes(&rev));
        }

        /// Reordering the values (batch order) does not change the result.
        #[test]
        fn value_order_does_not_matter(mut v in values(), seed in any::<u64>()) {
            let whole = stats_of(&[&v]);
            let n = v.len();
            if n > 1 {
                let mut x = seed | 1;
                for i in (1..n).rev() {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    v.swap(i, (x % (i as u64 + 1)) as usize);
                }
            }
            prop_assert_eq!(bytes(&whole), bytes(&stats_of(&[&v])));
        }

        /// Range-only statistics are the full ones without the histogram, for any batching and merge order.
        #[test]
        fn range_only_keeps_exactly_the_range(v in values(), split in 1usize..500) {
            let full = stats_of(&[&v]);
            let mut ranged = TensorStats::range_only();
            let mut merged = TensorStats::range_only();
            for c in v.chunks(split) {
                ranged.add(c);
                let mut part = TensorStats::range_only();
                part.add(c);
                merged.merge(&part);
            }
            prop_assert_eq!(bytes(&full.clone().into_range_only()), bytes(&ranged));
            prop_assert_eq!(bytes(&ranged), bytes(&merged));
            prop_assert_eq!(ranged.hist.range_exp, None);
            prop_assert!(ranged.hist.counts.iter().all(|&c| c == 0));
            prop_assert_eq!(ranged.amax(), full.amax());
        }

        /// Every finite value is in exactly one bin whose interval contains |x|.
        #[test]
        fn counts_match_a_direct_computation(v in values()) {
            let s = stats_of(&[&v]);
            let finite: Vec<f32> = v.iter().copied().filter(|x| x.is_finite()).collect();
            prop_assert_eq!(s.hist.total(), finite.len() as u64);
            if let Some(e) = s.hist.range_exp {
                let mut direct = vec![0u64; BINS];
                for x in &finite {
                    let b = ((x.abs() as f64) / (e as f64).exp2() * BINS as f64).floor() as usize;
                    direct[b] += 1;
                }
                prop_assert_eq!(&direct, &s.hist.counts);
            }
        }
    }
}
