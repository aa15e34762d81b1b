"""Dataset readers, writers and synthetic scenes (docs/method.md §7, §8)."""
