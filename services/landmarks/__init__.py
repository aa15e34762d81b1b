"""Landmark worker (queue ``landmarks``): MTCNN 5-point landmarks, chunked over a dataset's images."""
