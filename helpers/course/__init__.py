"""Running the course: paths, the Colab set-up, the article's recorded outputs, the notebooks and the main job,
the results files, batch and distributed grounding, the command line, the playground and the exercise solutions
(see ``helpers``' docstring for the map)."""
