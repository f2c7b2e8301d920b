"""Workflows: reweight, generate, nightly, sweep, evaluate, composed from the layers below."""
