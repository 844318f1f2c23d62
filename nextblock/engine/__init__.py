"""Fast inference engines behind `modeling.forward` (see int8.py): today one, int8 on CPU."""
