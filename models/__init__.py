"""Model files, one per architecture family; each declares its `ARCHITECTURES`, collected here
for jaxllm.models.registry. Shared pieces: layers.py, rope.py, attention.py, decoder.py."""

from jaxllm.models import (
    apertus,
    biogpt,
    cohere,
    deepseek,
    dots1,
    ernie,
    exaone,
    falcon,
    gemma,
    gemma4,
    glm,
    glm4_moe,
    gpt2,
    gpt_bigcode,
    gpt_neo,
    gpt_neox,
    gpt_oss,
    gptj,
    granite,
    granitemoe,
    helium,
    hunyuan,
    llama,
    llama4,
    moe,
    nemotron,
    olmo,
    olmo2,
    olmoe,
    opt,
    phi,
    phi3,
    phimoe,
    qwen3_next,
    stablelm,
    starcoder2,
    xglm,
)

FAMILIES = (
    llama, gemma, phi3, moe, olmo2, gpt_neox, gpt2, granite, phi, exaone, apertus, stablelm, starcoder2, olmoe, granitemoe,
    phimoe, cohere, glm, ernie, gpt_oss, gpt_bigcode, gptj, falcon, olmo, nemotron, helium, gpt_neo, deepseek,
    glm4_moe, dots1, hunyuan, llama4, gemma4, qwen3_next, opt, biogpt, xglm,
)
ARCHITECTURES = tuple(a for family in FAMILIES for a in family.ARCHITECTURES)
