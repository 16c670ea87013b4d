"""Model files, one per architecture family. Importing this package registers them all."""

from jaxllm.models import llama  # noqa: F401
