"""Settings for every tier: no downloads, and Ray without auth tokens (local test clusters)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
