"""Benchmarks and sweeps, each run as ``python -m bench.<name>`` from the repository root.

Choosing (validation split only):   ``bench.sweep`` (variants of the transfer stage),
                                    ``bench.quality`` (every loss and setting, seeds, budgets)
Reading the test split, once:       ``bench.final`` (after a sweep or the quality benchmark),
                                    ``bench.seeds`` (the whole pipeline over seeds: the README table)
Speed and memory:                   ``bench.speed``, ``bench.eval_speed``, ``bench.loss_memory``
Source stage against lightly:       ``bench.source_baseline``
"""
