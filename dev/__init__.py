"""Development only: the `make run` launcher and a throwaway local Redis. No service imports
this package (tests/test_layering.py), and the images do not ship it."""
