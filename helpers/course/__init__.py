"""Running the course: paths, the Colab set-up, the notebooks and the main job, batch and distributed
grounding, the command line, the playground and the exercise solutions (see ``helpers``' docstring for the map)."""
