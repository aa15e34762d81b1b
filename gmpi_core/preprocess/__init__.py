"""Dataset preprocessing: facial landmarks (MTCNN) and head poses (docs/method.md §8)."""
