"""Behavioural monitoring: baselines, detectors, risk scores, responses, CAEP push."""
