"""Evaluation: metrics (FID/KID, identity consistency, depth and pose accuracy) and the protocol (§9)."""
