"""The synthetic world the bundled model was trained on: its scenes, its grounded texts and processor, the
training recipe and the model card (see ``helpers``' docstring for the map)."""
