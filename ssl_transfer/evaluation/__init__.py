"""Evaluation of trained models: frozen-feature probes (linear_eval) and the standard SGD linear probe."""
