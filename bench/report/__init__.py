"""Reports of a suite: long results table (parquet/CSV), leaderboards, figures and ``report.html``.

``build_report(suite_dir)`` writes everything; ``report_after_suite(suite_dir)`` is what
``bench run`` calls at the end of a suite (logs instead of raising).
"""

from __future__ import annotations

from bench.report.html import build_report, report_after_suite
from bench.report.tables import ablation_groups, leaderboard, long_table, write_long_table

__all__ = ["build_report", "report_after_suite", "long_table", "write_long_table", "leaderboard", "ablation_groups"]
