"""Test-run settings. In CI (the CI environment variable is set) hypothesis draws the same
examples every run, so a submission's result does not depend on the luck of the draw; locally it
explores new examples each run."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
