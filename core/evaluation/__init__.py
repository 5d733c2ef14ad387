"""Evaluation: attacks over example shards → per-example rows → per-(trial, attack, ε) aggregates with intervals."""
