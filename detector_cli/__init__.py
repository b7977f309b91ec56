"""The Hydra side of the project, installed beside the library (``pip install -e .``).

``detector/`` takes plain Python values and never imports Hydra or OmegaConf; ``tools/*.py`` are
short entry points (check the command line, ``@hydra.main``, call). What they share lives here,
importable from a notebook or another tool as ``detector_cli.<module>``:

- ``cli``: user errors as one line and exit code 2, path-valued overrides quoted for Hydra, the
  tools' ``checkpoint=`` rule, a constructor's ``OptionError`` named by its config key;
- ``checks``: the tool-level checks of a composed config (types, paths, ranges the library's
  constructors do not hold) and Hydra's rejection of an override as one line;
- ``sweep``: the sweep callback (``_target_: detector_cli.sweep.SweepIndex`` in
  configs/train.yaml) and the ``${job_folder:...}`` resolver of a sweep job's folder;
- ``train``: training from a composed config (build, run, report; ``tools/train_net.py``);
- ``evaluate``, ``predict``, ``export``, ``serve``, ``inspect_model``, ``profile``, ``soak``: the
  other tools' runs from their composed configs.

It imports ``detector``; ``detector`` never imports it (tests/test_layers.py).
"""
