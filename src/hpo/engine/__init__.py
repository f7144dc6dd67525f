"""The search engine: Ray Tune driven by Optuna, and the driver's bookkeeping around it.

``ray_tune`` (the Tuner, the trial function run in Ray workers, the driver's trial-tracking callback),
``records`` (what the driver knows of each trial), ``recovery`` (continuing a killed search), ``live``
(the terminal view), ``limits`` (per-trial memory caps) and ``run_dir`` (a run's folder: state, journal,
lock; standard library only, so ``hpo status`` stays fast). Nothing here imports Ray at package import.
"""
