"""Memory read bandwidth with N threads: the ceiling for decode, which streams the weights.

A small C reader (compiled on first use into bench/cache with the system C compiler, at
-O3 -march=native so it uses the widest loads this CPU has) sums a buffer far larger than
the last-level cache with N threads, each over its own contiguous slice, several passes;
it prints the median GB/s of the passes. numpy cannot do this: its sum runs on one thread.

    python bench/membw.py --threads 2 --mib 1024
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

CACHE = Path(__file__).resolve().parent / "cache"
BINARY = CACHE / "membw"

C_SOURCE = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct { const uint64_t *p; size_t n; uint64_t sum; } Job;
static pthread_barrier_t start_line;

static void *reader(void *arg) {
    Job *j = (Job *)arg;
    pthread_barrier_wait(&start_line);
    /* eight independent xor chains: the loop is load-bound, and the compiler vectorises it */
    uint64_t a[8] = {0};
    for (size_t i = 0; i + 8 <= j->n; i += 8)
        for (int k = 0; k < 8; k++) a[k] ^= j->p[i + k];
    for (int k = 0; k < 8; k++) j->sum ^= a[k];
    pthread_barrier_wait(&start_line);
    return NULL;
}

static double now(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int nt = argc > 1 ? atoi(argv[1]) : 2, passes = argc > 3 ? atoi(argv[3]) : 7;
    size_t bytes = (size_t)(argc > 2 ? atol(argv[2]) : 1024) << 20;
    if (nt < 1 || nt > 256 || passes < 1 || bytes < ((size_t)1 << 20)) { fprintf(stderr, "bad arguments\n"); return 2; }
    size_t n = bytes / 8;
    uint64_t *buf = aligned_alloc(64, n * 8);
    if (!buf) { fprintf(stderr, "out of memory\n"); return 1; }
    for (size_t i = 0; i < n; i++) buf[i] = i * 0x9E3779B97F4A7C15ull;   /* touch every page */
    pthread_t th[256]; Job jobs[256]; double gbs[64]; uint64_t check = 0;
    pthread_barrier_init(&start_line, NULL, nt + 1);
    for (int r = 0; r < passes && r < 64; r++) {
        size_t per = n / nt;
        for (int t = 0; t < nt; t++) {
            jobs[t] = (Job){buf + t * per, per, 0};
            pthread_create(&th[t], NULL, reader, &jobs[t]);
        }
        pthread_barrier_wait(&start_line);
        double t0 = now();
        pthread_barrier_wait(&start_line);
        double dt = now() - t0;
        for (int t = 0; t < nt; t++) { pthread_join(th[t], NULL); check ^= jobs[t].sum; }
        gbs[r] = (double)(per * nt * 8) / dt / 1e9;
    }
    qsort(gbs, passes, sizeof(double), cmp);
    printf("{\"threads\": %d, \"mib\": %zu, \"passes\": %d, \"median_gbs\": %.3f, \"max_gbs\": %.3f, \"check\": %llu}\n",
           nt, bytes >> 20, passes, gbs[passes / 2], gbs[passes - 1], (unsigned long long)(check & 1));
    free(buf);
    return 0;
}
"""


def build() -> Path:
    src = CACHE / "membw.c"
    if BINARY.exists() and src.exists() and src.read_text() == C_SOURCE:
        return BINARY
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise SystemExit("membw: no C compiler (cc/gcc/clang) on PATH")
    CACHE.mkdir(parents=True, exist_ok=True)
    src.write_text(C_SOURCE)
    subprocess.run([cc, "-O3", "-march=native", "-pthread", "-o", str(BINARY), str(src)], check=True)
    return BINARY


def measure(threads: int = 2, mib: int = 1024, passes: int = 7) -> dict:
    """{"threads", "mib", "passes", "median_gbs", "max_gbs"}: read bandwidth of `threads` threads."""
    out = subprocess.run([str(build()), str(threads), str(mib), str(passes)],
                         capture_output=True, text=True, check=True).stdout
    res = json.loads(out)
    res.pop("check")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--mib", type=int, default=1024, help="buffer size in MiB (default 1024)")
    ap.add_argument("--passes", type=int, default=7)
    a = ap.parse_args(argv)
    print(json.dumps(measure(a.threads, a.mib, a.passes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
