"""The titok-serve gateway (FastAPI). It never imports torch, ``training`` or ``export``."""
