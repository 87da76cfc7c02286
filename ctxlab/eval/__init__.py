"""Evaluation harness: metric registry (`metrics`) and data-card rendering (`cards`)."""
