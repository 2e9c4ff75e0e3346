"""Benchmarks that print Markdown tables: ``python -m bench`` runs the suite and writes docs/benchmarks.md."""
