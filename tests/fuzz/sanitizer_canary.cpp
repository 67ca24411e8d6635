// Planted bugs for tests/test_robust_sanitizers.py: built only with -DNEMOCPU_SANITIZE=ON, with the
// core's sanitizer flags, and loaded (ctypes) into a Python started exactly like the sanitized test
// run. Each must produce a sanitizer report there; otherwise "no report" from the core's tests
// would prove nothing.
#include <cstdlib>
#include <cstring>

extern "C" {

// Reads one float past a heap block, as an unchecked tensor offset would.
int canary_heap_overflow(int n) {
    auto* p = static_cast<float*>(std::malloc(sizeof(float) * n));
    std::memset(p, 0, sizeof(float) * n);
    volatile float v = p[n];
    std::free(p);
    return static_cast<int>(v);
}

// Overflows a signed product, as an unchecked ne0 * ne1 would.
int canary_signed_overflow(int a) {
    volatile int b = a;
    return b * b;
}

}
