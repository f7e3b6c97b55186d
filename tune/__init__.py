"""tune: the Ray Tune search over the cattle_yolo training loop.

``space`` reads and checks a search-space YAML (no Ray, no torch: it runs before anything
starts); ``trainable`` runs one trial; ``stoppers`` holds the divergence rules; ``search`` starts
Ray and builds the Tuner; ``report`` writes the summary, the best config and the plots.
Import the submodules you need: this package imports nothing heavy on its own.
"""
