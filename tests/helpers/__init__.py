"""Code the tests share (no test modules): ``from helpers.<module> import ...``.

``tests/`` is on ``sys.path`` (pytest's ``pythonpath`` option in pyproject.toml), so this package
imports as ``helpers``; a subprocess that must import it (a config naming
``helpers.tiny_training.TinyBackbone``) gets ``tests/`` on ``PYTHONPATH``.

- ``hostile_files``: a deadline for code that could hang; FIFOs, symlink loops, folders.
- ``load_file``: a tool's script (``load_tool``) or any file, imported by path.
- ``run_tool``: a tool's command line in this process, as a subprocess would run it.
- ``tiny_checkpoint``: a small VGG16-BN checkpoint as train_net.py writes it.
- ``tiny_training``: a tiny stride-16 model, trainers and train_net.py overrides that train it
  in seconds.
- ``tiny_faster_rcnn``: a tiny Faster R-CNN, its criteria and random batches (the model tests).
"""
