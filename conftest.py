# Running every suite from the root: pytest's importlib mode names a test module after its path
# ("auth/tests/test_x.py" -> "auth.tests.test_x") and would otherwise make a placeholder module
# for "auth", hiding the real service package. Importing the packages first prevents that.
import importlib
import importlib.util

for _package in ("auth", "tickets", "orders", "expiration", "payments", "client"):
    if importlib.util.find_spec(_package) is not None:
        importlib.import_module(_package)
