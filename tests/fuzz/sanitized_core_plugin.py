"""pytest plugin (-p sanitized_core_plugin): import nemocpu._core from the AddressSanitizer +
UBSan build named by $NEMOCPU_SANITIZED_CORE instead of the installed extension, so the
ordinary kernel/engine/model tests run against it (tests/test_robust_sanitizers.py)."""

import importlib.util
import os
import sys

_path = os.environ["NEMOCPU_SANITIZED_CORE"]
_spec = importlib.util.spec_from_file_location("nemocpu._core", _path)
_core = importlib.util.module_from_spec(_spec)
sys.modules["nemocpu._core"] = _core
_spec.loader.exec_module(_core)

try:  # fewer examples: sanitized code is several times slower (explicit @settings still win)
    from hypothesis import settings
    settings.register_profile("sanitized", max_examples=int(os.environ.get("NEMOCPU_SANITIZE_EXAMPLES", "10")),
                              deadline=None)
    settings.load_profile("sanitized")
except ImportError:
    pass

import nemocpu  # noqa: E402  (after the swap: the package must pick up the sanitized module)

nemocpu._core = _core   # what the import system sets when it loads a submodule itself
from nemocpu import _core as _imported  # noqa: E402

assert _imported is _core and _core.__file__ == _path
print(f"nemocpu._core (sanitized): {_core.__file__}", file=sys.stderr, flush=True)
