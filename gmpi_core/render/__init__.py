"""What people look at: images, grids, strips, videos of MPIs and their views (spec §10)."""
