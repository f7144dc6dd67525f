"""The search engine: Ray Tune driven by Optuna, and the driver's bookkeeping around it.

``ray_tune`` (the Tuner and the trial function run in Ray workers), ``trial_book`` (the driver's bookkeeping
of trial events: records, tracker runs, journal; no Ray), ``ray_callbacks`` (the Ray callback and stopper
that feed it), ``records`` (what the driver knows of each trial), ``recovery`` (continuing a killed search),
``asha`` (seeding a fresh ASHA), ``_private_api`` (every read of a private Ray or Optuna attribute),
``live`` (the terminal view), ``eta`` (its estimate of the search's end), ``trial_output`` (a trial's stdout
and stderr, caught in its process and sent with its reports), ``driver_log`` (the console teed into the run
folder's ``driver.log``), ``limits`` (per-trial memory caps) and ``run_dir`` (a run's folder: state,
journal, lock; standard library only, so ``hpo status`` stays fast). Nothing here imports Ray at package
import.
"""
