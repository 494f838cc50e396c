"""Hypothesis profiles: ``dev`` (default, quick) and ``ci`` (more examples, derandomized).

Select with ``HYPOTHESIS_PROFILE=ci`` (``.ci/run`` does).
"""

import os

from hypothesis import settings

settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
