// Statistics kernels for `calibrate --device cuda`, compiled at run time by NVRTC (see gpu.rs).
typedef unsigned long long u64;
typedef long long i64;
#define BINS 4096
#define LOG2_BINS 12
#define WORDS 8
#define NO_RANGE (-9223372036854775807LL - 1)

// Order-preserving key of a finite float (after +0.0 so that -0.0 and 0.0 share one key).
__device__ __forceinline__ unsigned int key_of(float x) {
    unsigned int b = __float_as_uint(x + 0.0f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float float_of(unsigned int k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
// The smallest e with a < 2^e, for finite a > 0 (as histogram.rs: range_exp_for).
__device__ __forceinline__ int range_exp_for(float a) {
    unsigned int bits = __float_as_uint(a) & 0x7fffffffu;
    int biased = (int)(bits >> 23);
    if (biased == 0) { return 32 - __clz(bits & 0x007fffffu) - 149; }
    return biased - 126;
}

// Chunk starts are multiples of 2^16 values from 256-byte aligned buffers: float4 loads (more bytes in
// flight per thread) with a scalar tail.
#define FOR_EACH_VALUE(x, n, VISIT) { \
    u64 n4 = (((u64)(x) & 15) == 0) ? (n) / 4 : 0; \
    const float4* x4 = (const float4*)(x); \
    for (u64 i = threadIdx.x; i < n4; i += blockDim.x) { \
        float4 q = x4[i]; VISIT(q.x); VISIT(q.y); VISIT(q.z); VISIT(q.w); } \
    for (u64 i = 4 * n4 + threadIdx.x; i < (n); i += blockDim.x) { VISIT((x)[i]); } }

// chunks[3*c] = device address, [3*c+1] = values in this chunk, [3*c+2] = tensor index.
// batch[WORDS*t]: 0 min key, 1 max key, 2 finite, 3 nan, 4 +inf, 5 -inf.
extern "C" __global__ void reduce_stats(const u64* chunks, u64* batch) {
    const float* x = (const float*)chunks[3 * blockIdx.x];
    u64 n = chunks[3 * blockIdx.x + 1];
    u64* slot = batch + WORDS * chunks[3 * blockIdx.x + 2];
    unsigned int lo = 0xffffffffu, hi = 0u;
    unsigned int finite = 0, nan = 0, pinf = 0, ninf = 0;
#define STAT(v) { float w = (v); \
        if (isfinite(w)) { unsigned int k = key_of(w); lo = min(lo, k); hi = max(hi, k); finite++; } \
        else if (isnan(w)) { nan++; } else if (w > 0.0f) { pinf++; } else { ninf++; } }
    FOR_EACH_VALUE(x, n, STAT)
    for (int o = 16; o > 0; o >>= 1) {
        lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o));
        hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o));
        finite += __shfl_xor_sync(0xffffffffu, finite, o);
        nan += __shfl_xor_sync(0xffffffffu, nan, o);
        pinf += __shfl_xor_sync(0xffffffffu, pinf, o);
        ninf += __shfl_xor_sync(0xffffffffu, ninf, o);
    }
    if ((threadIdx.x & 31) == 0) {
        if (finite) { atomicMin(&slot[0], (u64)lo); atomicMax(&slot[1], (u64)hi); atomicAdd(&slot[2], (u64)finite); }
        if (nan) atomicAdd(&slot[3], (u64)nan);
        if (pinf) atomicAdd(&slot[4], (u64)pinf);
        if (ninf) atomicAdd(&slot[5], (u64)ninf);
    }
}

// One block per tensor. state[WORDS*t]: 0 range exponent (NO_RANGE = none yet), 1 min key, 2 max key,
// 3 finite, 4 nan, 5 +inf, 6 -inf. Folds the batch slot into the state, grows the histogram range by
// pair-merging bins, and resets the slot for the next batch.
extern "C" __global__ void update_state(u64* batch, i64* state, u64* hist) {
    __shared__ u64 old[BINS];
    u64* slot = batch + WORDS * blockIdx.x;
    i64* st = state + WORDS * blockIdx.x;
    u64* h = hist + (u64)BINS * blockIdx.x;
    u64 finite = slot[2];
    i64 cur = st[0];
    i64 grow = cur;
    if (finite) {
        float a = fmaxf(fabsf(float_of((unsigned int)slot[0])), fabsf(float_of((unsigned int)slot[1])));
        if (a > 0.0f) {
            i64 e = range_exp_for(a);
            if (cur == NO_RANGE || e > cur) grow = e;
        }
    }
    if (grow != cur && cur != NO_RANGE) {
        int steps = (int)(grow - cur);
        for (int i = threadIdx.x; i < BINS; i += blockDim.x) old[i] = h[i];
        __syncthreads();
        for (int j = threadIdx.x; j < BINS; j += blockDim.x) {
            u64 s = 0;
            if (steps > LOG2_BINS) {
                if (j == 0) for (int i = 0; i < BINS; i++) s += old[i];
            } else if (j < (BINS >> steps)) {
                for (int i = j << steps; i < ((j + 1) << steps); i++) s += old[i];
            }
            h[j] = s;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        st[0] = grow;
        if (finite) {
            if (st[3] == 0) { st[1] = (i64)slot[0]; st[2] = (i64)slot[1]; }
            else { st[1] = min((u64)st[1], slot[0]); st[2] = max((u64)st[2], slot[1]); }
        }
        st[3] += (i64)finite; st[4] += (i64)slot[3]; st[5] += (i64)slot[4]; st[6] += (i64)slot[5];
        slot[0] = 0xffffffffull; slot[1] = 0; slot[2] = 0; slot[3] = 0; slot[4] = 0; slot[5] = 0;
    }
}

// Bins finite |x| at the tensor's (already updated) range into a shared table, then adds it to the
// tensor's running histogram.
extern "C" __global__ void bin_values(const u64* chunks, const i64* state, u64* hist) {
    __shared__ unsigned int table[BINS];
    for (int i = threadIdx.x; i < BINS; i += blockDim.x) table[i] = 0;
    __syncthreads();
    const float* x = (const float*)chunks[3 * blockIdx.x];
    u64 n = chunks[3 * blockIdx.x + 1];
    u64 t = chunks[3 * blockIdx.x + 2];
    i64 e = state[WORDS * t];
    int shift = (e == NO_RANGE) ? 0 : (int)(LOG2_BINS - e);
    if (shift >= -126 && shift <= 126) {
        float k = __uint_as_float((unsigned int)(shift + 127) << 23);
#define BIN(v) { float w = (v); if (isfinite(w)) { \
        atomicAdd(&table[min(__float2uint_rz(__fmul_rn(fabsf(w), k)), (unsigned int)(BINS - 1))], 1u); } }
        FOR_EACH_VALUE(x, n, BIN)
    } else {
        // 2^shift is not a normal float32: bin in double, still exact (as the CPU path does).
        double k = exp2((double)shift);
        for (u64 i = threadIdx.x; i < n; i += blockDim.x) {
            float v = x[i];
            if (isfinite(v)) {
                double p = (double)fabsf(v) * k;
                unsigned int b = p >= (double)(BINS - 1) ? (BINS - 1) : (unsigned int)p;
                atomicAdd(&table[b], 1u);
            }
        }
    }
    __syncthreads();
    u64* h = hist + (u64)BINS * t;
    for (int i = threadIdx.x; i < BINS; i += blockDim.x) {
        if (table[i]) atomicAdd(&h[i], (u64)table[i]);
    }
}
