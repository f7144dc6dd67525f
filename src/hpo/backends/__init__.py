"""Search backends. ``ray_tune`` samples with Optuna's TPE inside Ray Tune and stops weak trials with ASHA."""
