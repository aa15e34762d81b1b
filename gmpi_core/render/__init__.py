"""What people look at: images, grids, strips, videos of MPIs and their views (docs/method.md §10)."""
