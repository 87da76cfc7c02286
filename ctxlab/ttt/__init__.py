"""Test-time training for long contexts: qTTT (query-only TTT), its FLOP model, matched-compute strategies and
attention diagnostics. Import the submodules directly; this package imports nothing heavy."""
