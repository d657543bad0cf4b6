// Diagnostic LD_PRELOAD library: logs every CUDA stream capture that begins in the process (runtime and
// driver API, including driver entry points fetched through cuGetProcAddress), with the thread and a
// backtrace, so that the capture behind "operation not permitted when stream is capturing" can be named.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef int (*begin2_fn)(void *, int);
typedef int (*begin1_fn)(void *);
typedef int (*end_fn)(void *, void **);
typedef int (*getproc_fn)(const char *, void **, int, uint64_t, void *);
typedef void *(*dlsym_fn)(void *, const char *);

static begin2_fn real_rt_begin, real_cu_begin2, real_cu_begin_ptsz;
static begin1_fn real_cu_begin1;
static getproc_fn real_getproc2, real_getproc1;
static dlsym_fn real_dlsym;

static void trace(const char *what, void *stream, int mode) {
    void *bt[40];
    int n = backtrace(bt, 40);
    fprintf(stderr, "[capture-trace] %s stream=%p mode=%d thread=%lu\n", what, stream, mode,
            (unsigned long)pthread_self());
    backtrace_symbols_fd(bt, n, 2);
    fflush(stderr);
}

int cudaStreamBeginCapture(void *s, int mode) {
    if (!real_rt_begin) real_rt_begin = (begin2_fn)dlsym(RTLD_NEXT, "cudaStreamBeginCapture");
    trace("cudaStreamBeginCapture", s, mode);
    return real_rt_begin(s, mode);
}
static int wrap_cu_begin2(void *s, int mode) { trace("cuStreamBeginCapture_v2", s, mode); return real_cu_begin2(s, mode); }
static int wrap_cu_begin_ptsz(void *s, int mode) { trace("cuStreamBeginCapture_ptsz", s, mode); return real_cu_begin_ptsz(s, mode); }
static int wrap_cu_begin1(void *s) { trace("cuStreamBeginCapture", s, -1); return real_cu_begin1(s); }

static int wrap_getproc2(const char *sym, void **pfn, int version, uint64_t flags, void *status);
static void *wrap_proc(const char *sym, void *pfn, int version, uint64_t flags) {
    if (pfn && strncmp(sym, "cuGetProcAddress", 16) == 0) { real_getproc2 = (getproc_fn)pfn; return (void *)wrap_getproc2; }
    if (!pfn || strncmp(sym, "cuStreamBeginCapture", 20) != 0) return pfn;
    fprintf(stderr, "[capture-trace] cuGetProcAddress(%s, version %d, flags %lu)\n", sym, version, (unsigned long)flags);
    if (strcmp(sym, "cuStreamBeginCapture") == 0 && version < 10010) { real_cu_begin1 = (begin1_fn)pfn; return (void *)wrap_cu_begin1; }
    if (flags & 2) { real_cu_begin_ptsz = (begin2_fn)pfn; return (void *)wrap_cu_begin_ptsz; }
    real_cu_begin2 = (begin2_fn)pfn;
    return (void *)wrap_cu_begin2;
}
static int wrap_getproc2(const char *sym, void **pfn, int version, uint64_t flags, void *status) {
    int r = real_getproc2(sym, pfn, version, flags, status);
    if (r == 0 && pfn) *pfn = wrap_proc(sym, *pfn, version, flags);
    return r;
}
static int wrap_getproc1(const char *sym, void **pfn, int version, uint64_t flags, void *status) {
    int r = real_getproc1(sym, pfn, version, flags, status);
    if (r == 0 && pfn) *pfn = wrap_proc(sym, *pfn, version, flags);
    return r;
}
int cuGetProcAddress_v2(const char *sym, void **pfn, int version, uint64_t flags, void *status) {
    if (!real_getproc2) real_getproc2 = (getproc_fn)dlsym(RTLD_NEXT, "cuGetProcAddress_v2");
    return wrap_getproc2(sym, pfn, version, flags, status);
}
int cuStreamBeginCapture_v2(void *s, int mode) {
    if (!real_cu_begin2) real_cu_begin2 = (begin2_fn)dlsym(RTLD_NEXT, "cuStreamBeginCapture_v2");
    return wrap_cu_begin2(s, mode);
}
void *dlsym(void *handle, const char *sym) {
    if (!real_dlsym) real_dlsym = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
    if (!real_dlsym) real_dlsym = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
    void *p = real_dlsym(handle, sym);
    if (!p || handle == RTLD_NEXT) return p;
    if (strcmp(sym, "cuGetProcAddress_v2") == 0) { real_getproc2 = (getproc_fn)p; return (void *)wrap_getproc2; }
    if (strcmp(sym, "cuGetProcAddress") == 0) { real_getproc1 = (getproc_fn)p; return (void *)wrap_getproc1; }
    if (strncmp(sym, "cuStreamBeginCapture", 20) == 0) {
        fprintf(stderr, "[capture-trace] dlsym(%s)\n", sym);
        if (strcmp(sym, "cuStreamBeginCapture") == 0) { real_cu_begin1 = (begin1_fn)p; return (void *)wrap_cu_begin1; }
        if (strstr(sym, "ptsz")) { real_cu_begin_ptsz = (begin2_fn)p; return (void *)wrap_cu_begin_ptsz; }
        real_cu_begin2 = (begin2_fn)p; return (void *)wrap_cu_begin2;
    }
    return p;
}
