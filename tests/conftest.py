import os

from hypothesis import HealthCheck, settings

# CI runs a bounded number of examples per property; locally `dev` (or HYPOTHESIS_PROFILE=big)
# digs deeper.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=25, derandomize=True, **_common)
settings.register_profile("dev", max_examples=100, **_common)
settings.register_profile("big", max_examples=1000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
