"""In-process study runners that loop over configurations of the Hydra config (each
``python -m actsparse.experiments.<name>``)."""
