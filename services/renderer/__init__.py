"""Render worker (queue ``render``): sync views and MPI exports from an LRU of models and MPIs; video and
mesh jobs."""
