"""Analysis over a sweep's Parquet tables only: trade-off frontiers and plots."""
