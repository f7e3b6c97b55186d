"""tune: the Ray Tune search over the cattle_yolo training loop.

Before Ray starts: ``space`` reads and checks a search-space YAML (no Ray, no torch);
``plan`` turns a request into a checked plan (fresh start or resume); ``results`` names the
result keys, statuses and ``TrialRow``. On Ray: ``driver`` runs a plan (``cluster`` starts Ray,
``search`` builds the Tuner from ``study``, the Optuna side, and ``stoppers``, the divergence
rules); ``trainable`` runs one trial; ``threshold`` holds the rule of the score threshold
chosen after training; ``disk`` bounds the weights kept; ``storage`` handles paths and cloud
URIs. After: ``report`` and ``plots`` write the summary, the best config and
the plots; ``confirm`` retrains the top configs on fresh seeds. The fix audit: ``design``
(the experiment), ``audit`` (its plan and runs) and ``audit_report``. Import the submodules
you need: this package imports nothing heavy on its own.
"""
