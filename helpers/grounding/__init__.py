"""The grounding library: boxes, location tokens, Kosmos-2's prompts, images, plots, loading and running
the model, and scoring its boxes. It works the same for the real Kosmos-2 and the bundled model, and
depends on nothing of the synthetic world or the course machinery (see ``helpers``' docstring for the map)."""
