// Python bindings of the C++ core (nemocpu._core). The engine and kernels are added by
// the runtime issue; this file only wires what exists.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "nemocpu C++ core";
  m.attr("__version__") = NEMOCPU_VERSION;
}
