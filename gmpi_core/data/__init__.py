"""Dataset readers, writers and synthetic scenes (spec §7, §8)."""
