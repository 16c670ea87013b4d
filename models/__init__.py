"""Model files, one per architecture family. Importing this package registers them all."""

from jaxllm.models import gemma, gpt2, gpt_neox, llama, moe, olmo2, phi3  # noqa: F401
