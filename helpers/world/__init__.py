"""The synthetic world the bundled model was trained on: its scenes, its grounded texts and processor, the
training recipe, the model card and the stars, a kind it never had, for the fine-tuning demonstration (see
``helpers``' docstring for the map)."""
