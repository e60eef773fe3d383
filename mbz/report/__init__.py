"""Reporting: charts and REPORT.md from recorded files."""
