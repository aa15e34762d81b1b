"""Dataset preprocessing: facial landmarks (MTCNN) and head poses (spec §8)."""
