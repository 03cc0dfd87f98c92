"""Benchmarks of the project's hot paths against their baselines (`python -m bench --help`)."""
