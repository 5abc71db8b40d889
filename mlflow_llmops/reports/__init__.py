"""Reports built from the SQL analyses in ``sql/`` (the daily cost report)."""

from mlflow_llmops.reports.daily import DailyReport, ReportParams, daily_report, previous_day

__all__ = ["DailyReport", "ReportParams", "daily_report", "previous_day"]
