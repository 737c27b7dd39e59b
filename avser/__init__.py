"""avser: audio-visual speech emotion recognition on Ray."""

__version__ = "0.1.0"


def load_model(uri: str):
    """A registered or logged avser model (``models:/avser@champion``,
    ``models:/avser/3``, ``runs:/...`` or a downloaded model folder), read as
    plain data: ``.bundle`` (network, configs, label names; ``.bundle.network()``
    builds the torch module) and ``.klda_head``. Nothing pickled is loaded."""
    from avser.platform.registry import load_avser_model  # imports MLflow

    return load_avser_model(uri)
