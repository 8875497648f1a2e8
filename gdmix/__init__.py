"""gdmix: Generalized Deep Mixed Models for personalization."""
__version__ = "0.1.0"
