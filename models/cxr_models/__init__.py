"""cxr_models: PhantomCXR, dataset readers, networks, trainers, evaluation and demo weights.

Never imports ``cxr_service``: dependencies point service -> models only.
"""

__version__ = "0.1.0"
