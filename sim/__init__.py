"""Simulation harnesses, runners and benchmarks for the generated accelerator."""
