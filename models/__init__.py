"""Model files, one per architecture family. Importing this package registers them all."""

from jaxllm.models import gemma, gpt_neox, llama, olmo2  # noqa: F401
