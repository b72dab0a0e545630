"""The coordinator's web dashboard: static page (static/), vendored libraries (vendor/), and the
server-side pieces the page reads (live snapshots, plan previews). Routes live in coordinator/dashboard.py."""

from pathlib import Path

ROOT = Path(__file__).parent
