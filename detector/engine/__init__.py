"""Training and evaluation loops: schedules, optimisation, logging, checkpoints."""
