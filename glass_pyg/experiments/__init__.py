"""Experiment runners and benchmarks: the only package code that touches files and the console."""
