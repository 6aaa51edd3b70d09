"""The service's routes, one module per concern; ``app.py`` includes them."""
