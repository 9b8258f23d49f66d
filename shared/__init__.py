"""Code that both the API and the worker stand on: settings, models, storage, the queue hand-off."""
