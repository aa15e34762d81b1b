"""Pose worker (queue ``pose``): head poses from the landmarks, written as Deep3DFace ``.mat`` files."""
