"""A random campaign against dense ground truth: see docs/accuracy.md and test_campaign.py."""
