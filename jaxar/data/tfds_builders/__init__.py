"""jaxar's own TFDS builders; importing this package registers them (``jaxar_digits``)."""

from jaxar.data.tfds_builders.digits_dataset import JaxarDigits

__all__ = ["JaxarDigits"]
