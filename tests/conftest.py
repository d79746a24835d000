"""Test-wide setup, before any test module imports torch."""

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine (CI, a developer
# running the app beside the tests) spinning threads made torch many times slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
