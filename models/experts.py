"""Routed experts (a mixture of experts: the router, the expert dispatch, expert parallelism) and
the choice of a decoder layer's feed-forward block (`make_mlp`: experts or a dense MLP). The dense
MLPs and the Dense layer the experts are built from are in layers.py.

Shapes: B batch, T tokens, E embed, F expert hidden, X experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.models import quant
from jaxllm.models.config import ModelConfig
from jaxllm.models.layers import MLP, Dense, GatedMLP, RMSNorm, activation, clamped_swiglu, param


class MoE(nnx.Module, pytree=False):
    """Mixture of experts: a router picks `experts_per_token` of `num_experts` gated MLPs per token.

    Dispatch: the (token, expert) assignments are sorted by expert and each expert multiplies only
    its own group (`jax.lax.ragged_dot`), so the work is tokens x k expert MLPs, not tokens x all;
    a decode step with few assignments takes each one's expert matrices instead (`expert_form`).
    Expert kernels carry the logical "expert" axis: [X, E, F] gate/up, [X, F, E] down.
    Quantized (`quantize`): each stack holds integers, `{name}_scale` (and `_offset`) [X, G, out]
    per group of inputs; the stacks are dequantized, then multiplied by the same ragged_dot. The
    router stays float (a small error there changes which experts run) and replicated (its scores'
    axis is "router", not "expert"): every device routes every token; float32 in a 16-bit model
    where `cfg.router_float32` says (its kernel, score bias and product, as transformers keeps DeepSeek's).

    Expert parallelism: on a mesh whose `expert_axis` (ep, jaxllm.sharding.RULES["expert"]) splits
    the experts, the loader sets `expert_mesh` (`split_experts`; static, so part of the graphdef).
    Each device then holds X / ep experts of every stack, scales and offsets included, and runs
    only those, under `jax.shard_map` over ep alone (dp, fsdp, tp left as they are): it takes the
    assignments routed to its expert range (the others sort after its groups and count for
    nothing), runs them through the same three ragged_dots with its local group sizes,
    scatter-adds its weighted outputs, and the partial outputs are summed over ep (`psum`, in
    float32 as the one-device sum). Tokens are replicated over ep, as over tp, so that sum is the
    whole exchange: an all-reduce of [tokens, embed] per MoE layer. When tokens are split over
    devices, an all-to-all dispatch (each assignment sent to its expert's device and back, k / X
    of the tokens' rows each way) pays off instead: a follow-up.

    Zero-computation experts (`cfg.zero_experts`, LongCat-Flash): the router scores them after the routed ones; an
    assignment to one adds its token times its weight, and the dispatch takes it as weight 0 on expert 0.

    Shared expert (`cfg.shared_expert_intermediate_size`, Qwen2-MoE): a gated MLP every token runs
    beside the routed ones, its output times sigmoid(`shared_expert_gate`(x)) and added to theirs
    in the model's dtype, as transformers adds them; without `cfg.shared_expert_gated` (GraniteMoeShared)
    added as it is, no gate, or (`cfg.shared_expert_average`, Cohere2-MoE) the two outputs' mean; the two summed in
    float32 where `cfg.shared_expert_float32` (HY V3). It is dense layers (quantized and split over tp as any MLP,
    whole on each ep group); its gate, one score a token, stays float as the router.

    gpt-oss (config flags, each off for the other families): the router has a bias and takes the
    top k of its logits, then softmaxes those k (`router` "topk_softmax"); each expert projection has
    a bias (`expert_bias`: `{name}_bias` [X, out], float, split over ep with its stack), added to
    each assignment's product; the activation is the clamped SwiGLU (`swiglu_limit`,
    `clamped_swiglu`) in place of act(gate) * up.

    Normed experts (`cfg.expert_output_norm`, Ergo): each assignment's output RMS-normed in float32 and scaled by its
    expert's row of `expert_norm` [X, E] (float, split over ep with the stacks), cast back, then weighted; the shared
    expert's output RMS-normed too where `cfg.shared_expert_norm`.
    """

    EXPERTS = ("gate_proj", "up_proj", "down_proj")

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        e, f, x = cfg.hidden_size, cfg.moe_intermediate_size or cfg.intermediate_size, cfg.num_experts
        # ungated experts (cfg.gated_mlp False: Nemotron-H's down(act(up(x)))): no gate stack
        self.names = self.EXPERTS if cfg.gated_mlp else self.EXPERTS[1:]
        # Nemotron-H's latent experts (moe_latent_size): their input fc1_latent_proj(x), their sum through fc2_latent_proj
        self.fc1_latent_proj = self.fc2_latent_proj = None
        if cfg.moe_latent_size:
            latent = dict(bias=cfg.mlp_bias, dtype=dtype, rngs=rngs)
            self.fc1_latent_proj = Dense((e,), (cfg.moe_latent_size,), ("embed", "latent"), **latent)
            self.fc2_latent_proj = Dense((cfg.moe_latent_size,), (e,), ("latent", "embed"), **latent)
            e = cfg.moe_latent_size
        self.k, self.num_experts, self.norm_topk = cfg.experts_per_token, x, cfg.norm_topk_prob
        self.zero_experts, routed = cfg.zero_experts, x + cfg.zero_experts  # the router's choices: both kinds
        self.router, self.jitter, self.norm_min, self.norm_eps = cfg.router, cfg.router_jitter, cfg.router_norm_min, cfg.router_norm_eps
        self.groups = (cfg.router_groups, cfg.router_topk_groups, cfg.router_group_score) if cfg.router_groups > 1 else None
        self.routed_scaling, self.softcap = cfg.routed_scaling, cfg.router_softcap
        self.router_dtype = jnp.float32 if cfg.router_float32 else dtype
        # DeepSeek-V3's and ERNIE 4.5 MoE's e_score_correction_bias: added to the scores for the choice, not to the weights
        self.e_score_correction_bias = param((routed,), ("router",), self.router_dtype) if cfg.router_score_bias else None
        self.scales_input = cfg.router_scales_input  # Llama 4: the weight scales the expert's input, not its output
        self.act = activation(cfg.expert_act or cfg.hidden_act)  # the shared expert's: hidden_act's
        self.swiglu = None if cfg.swiglu_limit is None else (cfg.swiglu_alpha, cfg.swiglu_limit, cfg.swiglu_shift)
        self.gate = Dense((cfg.hidden_size,), (routed,), ("embed", "router"), bias=cfg.router_bias, dtype=self.router_dtype, rngs=rngs,
                          quantizable=False)  # the router
        self.gate_proj = param((x, e, f), ("expert", "embed", "mlp"), dtype) if cfg.gated_mlp else None
        self.up_proj = param((x, e, f), ("expert", "embed", "mlp"), dtype)
        self.down_proj = param((x, f, e), ("expert", "mlp", "embed"), dtype)
        self.gate_proj_bias = self.up_proj_bias = self.down_proj_bias = None
        if cfg.expert_bias:
            self.gate_proj_bias = param((x, f), ("expert", "mlp"), dtype)
            self.up_proj_bias = param((x, f), ("expert", "mlp"), dtype)
            self.down_proj_bias = param((x, e), ("expert", "embed"), dtype)
        self.quantizable = True
        for name in self.names:
            setattr(self, f"{name}_scale", None)
            setattr(self, f"{name}_offset", None)
        self.expert_mesh, self.expert_axis = None, None  # split_experts: the mesh axis the experts are split over
        self.shared_expert = self.shared_expert_gate = None
        self.shared_average = cfg.shared_expert_average
        self.shared_float32 = cfg.shared_expert_float32
        self.bias = param((cfg.hidden_size,), ("embed",), dtype) if cfg.expert_output_bias else None  # JetMoE: added to the experts' sum
        # Ergo: each expert's output RMS-normed, times its own weight row [X, E]
        self.expert_norm = param((x, cfg.hidden_size), ("expert", "embed"), dtype) if cfg.expert_output_norm else None
        self.expert_norm_eps = cfg.norm_eps
        # A.X-K1: the block's output (routed and shared summed) RMS-normed
        self.post_mlp_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps, dtype=dtype, rngs=rngs) if cfg.moe_output_norm else None
        if cfg.shared_expert_intermediate_size:
            shared = cfg.replace(intermediate_size=cfg.shared_expert_intermediate_size)
            self.shared_expert = GatedMLP(shared, dtype=dtype, rngs=rngs) if cfg.gated_mlp else MLP(shared, dtype=dtype, rngs=rngs,
                                                                                                     bias=cfg.mlp_bias)
            if cfg.shared_expert_gated:
                self.shared_expert_gate = Dense((e,), (1,), ("embed", "router"), bias=False, dtype=dtype, rngs=rngs,
                                                quantizable=False)
        self.shared_expert_norm = None  # Ergo: the shared expert's output RMS-normed
        if self.shared_expert is not None and cfg.shared_expert_norm:
            self.shared_expert_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, dtype=dtype, rngs=rngs, upcast_scale=cfg.norm_upcast_scale)

    def quantize(self, path: tuple, scheme_for) -> None:
        """Declare each expert stack quantized by scheme_for(its path) (None: stay float)."""
        for name in self.names:
            scheme = scheme_for(path + (name,))
            if scheme is None:
                continue
            stack = getattr(self, name)
            (x, fan_in, out), axes, dtype = stack.get_value().shape, stack.axes, stack.get_value().dtype
            groups = scheme.groups(fan_in, ".".join(map(str, path + (name,))))
            scale_axes = (axes[0], quant.group_axis(axes, 1, groups), axes[2])
            setattr(self, name, param((x, fan_in, out), axes, scheme.kernel_dtype))
            scale_name, offset_name = quant.scale_names(name)
            setattr(self, scale_name, param((x, groups, out), scale_axes, scheme.scale_dtype or dtype))
            if scheme.offset:
                setattr(self, offset_name, param((x, groups, out), scale_axes, scheme.offset_dtype or dtype))

    def _stacks(self) -> list[tuple]:
        """(stack, scale or None, offset or None) of gate (where gated), up and down, as arrays; with expert
        biases, a next entry: the biases of gate, up and down; with normed experts, a last one: (expert_norm,)."""
        out = []
        for name in self.names:
            scale, offset = (getattr(self, n) for n in quant.scale_names(name))
            out.append((getattr(self, name)[...], None if scale is None else scale[...], None if offset is None else offset[...]))
        if self.gate_proj_bias is not None:
            out.append(tuple(getattr(self, f"{name}_bias")[...] for name in self.EXPERTS))
        if self.expert_norm is not None:
            out.append((self.expert_norm[...],))
        return out

    def _extras(self, stacks: list) -> tuple:
        """(the projections' entries of `stacks` (_stacks), the experts' biases or None, their norm weights or None)."""
        n, extra = len(self.names), list(stacks[len(self.names):])
        biases = extra.pop(0) if self.gate_proj_bias is not None else None
        norm = extra.pop(0)[0] if self.expert_norm is not None else None
        return stacks[:n], biases, norm

    def _normed(self, y, norm, ids):
        """y [A, E]: each assignment's expert output, RMS-normed in float32 times its expert's row of `norm` [X, E]
        (ids [A]: the experts, local; any past them clipped, their rows masked by the caller), cast back; y where the
        experts have no norm."""
        if norm is None:
            return y
        h = y.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.expert_norm_eps)
        return (h * jnp.take(norm, ids, axis=0, mode="clip").astype(jnp.float32)).astype(y.dtype)

    def _glu(self, *products):
        """The experts' hidden activations from their gate and up products (up's alone: act(up), ungated)."""
        if len(products) == 1:
            return self.act(products[0])
        gate, up = products
        if self.swiglu is None:
            return self.act(gate) * up
        return clamped_swiglu(gate, up, *self.swiglu)

    @staticmethod
    def _weight(stack, scale, offset, dtype):
        """An expert stack as floats of `dtype` (dequantized when quantized)."""
        return stack if scale is None else quant.dequantize(stack, scale, offset, dtype, in_axis=1)

    def route(self, x):
        """x [N, E] -> (weights [N, k] float32, expert ids [N, k]): softmax in float32, top k,
        renormalised when norm_topk_prob (the sum plus router_norm_eps, at least router_norm_min: ERNIE), as transformers
        routes (the logits soft-capped first where `cfg.router_softcap`: Laguna); or as `cfg.router` says: the top k logits, then softmax over those k (GraniteMoE,
        gpt-oss) or the sigmoid of each (Llama 4; chosen by the logits plus the score bias where the router has one:
        Kolibri-1), or `sparsemixer` (PhiMoE), or sigmoid scores
        (DeepSeek-V3); DeepSeek's choice within the best groups and with a score bias
        (`limited_top_k`; ERNIE's softmax scores take the bias too), its weights times routed_scaling."""
        logits = self.gate(x.astype(self.router_dtype)).astype(jnp.float32)
        if self.softcap:  # Laguna: the logits soft-capped
            logits = jnp.tanh(logits / self.softcap) * self.softcap
        if self.router in ("topk_softmax", "topk_sigmoid"):
            if self.e_score_correction_bias is None:
                top, experts = jax.lax.top_k(logits, self.k)
            else:  # Kolibri-1: chosen by the logits plus the score bias, weighed by the logits alone
                top, experts = limited_top_k(logits, self.k, self.e_score_correction_bias[...].astype(jnp.float32))
            if self.router == "topk_softmax":
                return jax.nn.softmax(top, axis=-1), experts
            weights = jax.nn.sigmoid(top)  # renormalised where norm_topk_prob (Cohere2-MoE's; Llama 4's never)
            return (weights / jnp.sum(weights, axis=-1, keepdims=True) if self.norm_topk else weights), experts
        if self.router == "sparsemixer":
            return sparsemixer(logits, self.jitter)
        probs = jax.nn.sigmoid(logits) if self.router == "sigmoid_topk" else jax.nn.softmax(logits, axis=-1)
        if self.groups is None and self.e_score_correction_bias is None:
            weights, experts = jax.lax.top_k(probs, self.k)
        else:
            bias = None if self.e_score_correction_bias is None else self.e_score_correction_bias[...].astype(jnp.float32)
            weights, experts = limited_top_k(probs, self.k, bias, self.groups)
        if self.norm_topk:
            weights = weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True) + self.norm_eps, self.norm_min)
        return weights * self.routed_scaling if self.routed_scaling != 1 else weights, experts

    def __call__(self, x, route_from=None):
        """The experts' output for x [..., E]; routed by `route_from` (same shape) where given, else
        by x itself (Gemma 4 routes the layer's input and feeds the experts its normed form)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        weights, experts = self.route(x if route_from is None else route_from.reshape(-1, shape[-1]))
        identity = None
        if self.zero_experts:  # LongCat: a zero-computation expert's output is its input, weighted; routed experts run the rest
            zero = experts >= self.num_experts
            identity = jnp.sum(jnp.where(zero, weights, 0.0), axis=-1, keepdims=True) * x.astype(jnp.float32)
            weights, experts = jnp.where(zero, 0.0, weights), jnp.where(zero, 0, experts)
        xs = x if self.fc1_latent_proj is None else self.fc1_latent_proj(x)
        if self.expert_mesh is None:
            out = self._experts(xs, weights, experts, self._stacks(), None)
        else:
            out = self._split_experts(xs, weights, experts, self._stacks())
        if identity is not None:
            out = out + identity
        if self.fc2_latent_proj is not None:
            out = self.fc2_latent_proj(out.astype(x.dtype))
        if self.bias is not None:  # JetMoE: a bias on the experts' sum
            out = out.astype(x.dtype) + self.bias[...]
        if self.shared_expert is None:
            return out.astype(x.dtype).reshape(shape)
        shared = self.shared_expert(x)
        if self.shared_expert_norm is not None:
            shared = self.shared_expert_norm(shared)
        if self.shared_expert_gate is not None:
            shared = jax.nn.sigmoid(self.shared_expert_gate(x)) * shared
        if self.shared_float32:  # HY V3: the sum in float32, then cast
            return (out + shared.astype(jnp.float32)).astype(x.dtype).reshape(shape)
        out = out.astype(x.dtype) + shared
        if self.shared_average and self.shared_expert_gate is None:  # Cohere2-MoE: the two outputs' mean
            out = out / 2
        if self.post_mlp_layernorm is not None:
            out = self.post_mlp_layernorm(out)
        return out.reshape(shape)

    def _experts(self, x, weights, experts, stacks, first, form: str | None = None):
        """[N, E] float32: each token's outputs of its chosen experts, weighted and summed, over the
        experts the stacks hold: all of them (`first` None), or first .. first + len(stack) - 1 (a
        device's range under expert parallelism; assignments to other experts count for nothing).
        `form` (default `expert_form`'s choice): "ragged" or "gather"."""
        local = stacks[0][0].shape[0]
        form = form or expert_form(experts.size, local)
        stacks, biases, norm = self._extras(stacks)
        flat = experts.reshape(-1)  # [N * k] assignments, token-major
        mine = None
        if first is not None:
            flat = flat - first
            mine = (flat >= 0) & (flat < local)
        if form == "gather":
            w = weights.reshape(-1).astype(jnp.float32)
            if mine is not None:
                flat, w = jnp.where(mine, flat, 0), jnp.where(mine, w, 0.0)
            return self._gathered(x, w, flat, stacks, biases, norm)
        if mine is not None:
            flat = jnp.where(mine, flat, local)  # others sort after every local group
        order, groups = expert_groups(flat, local)
        token = order // self.k  # the token of each assignment, in expert order
        xs = jnp.take(x, token, axis=0)  # [N * k, E]
        w = jnp.take(weights.reshape(-1), order)
        if self.scales_input:  # Llama 4: each assignment's input times its weight, its output unweighted
            xs, w = xs * w[:, None].astype(x.dtype), jnp.ones_like(w)
        *ins, down = (self._weight(*s, x.dtype) for s in stacks)
        products = [jax.lax.ragged_dot(xs, w, groups) for w in ins]  # gate (where gated) and up
        if biases is not None:  # each assignment's expert's biases (rows past the local groups: masked below)
            ids = jnp.take(flat, order)
            bias = [jnp.take(b_, ids, axis=0, mode="clip") for b_ in biases]
            products = [p + b_ for p, b_ in zip(products, bias)]
        y = jax.lax.ragged_dot(self._glu(*products), down, groups)  # [N * k, E]
        if biases is not None:
            y = y + bias[2]
        y = self._normed(y, norm, jnp.take(flat, order))
        y = y.astype(jnp.float32) * w[:, None]
        if mine is not None:  # rows past the local groups belong to no group: nothing of theirs is added
            y = jnp.where(jnp.take(mine, order)[:, None], y, 0.0)
        return jnp.zeros(x.shape, jnp.float32).at[token].add(y)

    def _gathered(self, x, w, flat, stacks, biases=None, norm=None):
        """`_experts` as each assignment's own expert matrices taken from the stacks (reads k
        experts per token) and one product per assignment. w [N * k] float32, flat [N * k] local ids."""
        *ins, down = (self._weight(*(None if a is None else jnp.take(a, flat, axis=0) for a in s), x.dtype)
                      for s in stacks)  # [N * k, E, F] gate (where gated) and up, [N * k, F, E] down
        bias = [0] * (len(ins) + 1) if biases is None else [jnp.take(b_, flat, axis=0) for b_ in biases]
        xs = jnp.repeat(x, self.k, axis=0)
        if self.scales_input:  # Llama 4: see _experts
            xs, w = xs * w[:, None].astype(x.dtype), jnp.ones_like(w)
        h = self._glu(*(jnp.einsum("ne,nef->nf", xs, m) + b_ for m, b_ in zip(ins, bias)))
        y = self._normed(jnp.einsum("nf,nfe->ne", h, down) + bias[-1], norm, flat).astype(jnp.float32) * w[:, None]
        return y.reshape(x.shape[0], self.k, -1).sum(1)

    def _split_experts(self, x, weights, experts, stacks):
        """`_experts` with the stacks split over `expert_axis`: each device runs its own experts on
        every token (tokens, weights and ids replicated over the axis), the partial sums psum'd."""
        axis = self.expert_axis
        # Under the engine's shard_map over dp, shard_map takes the context's (abstract) mesh.
        context = jax.sharding.get_abstract_mesh()
        mesh = self.expert_mesh if context.empty else context
        local = stacks[0][0].shape[0] // mesh.shape[axis]

        def body(x, weights, experts, stacks):
            partial = self._experts(x, weights, experts, stacks, jax.lax.axis_index(axis) * local)
            return jax.lax.psum(partial, axis)

        whole, split = jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec(axis)
        specs = (whole, whole, whole, jax.tree.map(lambda _: split, stacks))
        run = jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=whole, axis_names={axis}, check_vma=False)
        return run(x, weights, experts, stacks)


def expert_groups(flat, local: int):
    """The dispatch of assignments to experts: `flat` [A] expert ids (local ones 0 .. local - 1; `local` itself for
    another device's, which sort after every group) -> (order [A]: the assignments sorted by expert, stably;
    groups [local] int32: how many each local expert takes), as `jax.lax.ragged_dot` reads them."""
    order = jnp.argsort(flat, stable=True)
    return order, jnp.bincount(flat, length=local + 1)[:local].astype(jnp.int32)


def expert_rows(rows, flat, stack):
    """Each assignment's own row of `rows` [A, in] times its expert's matrix of `stack` [X, in, out] (ids `flat` [A])
    -> [A, out] in the assignments' order: `MoE`'s dispatch (`expert_groups`, one ragged_dot), its products put back
    in place. JetMoE's mixture of attention heads projects its queries and outputs by it."""
    order, groups = expert_groups(flat, stack.shape[0])
    out = jax.lax.ragged_dot(jnp.take(rows, order, axis=0), stack, groups)
    return jnp.zeros_like(out).at[order].set(out)


def limited_top_k(scores, k: int, bias=None, groups: tuple | None = None):
    """DeepSeek's choice of k experts by `scores` [N, X] float32 -> (weights [N, k], expert ids [N, k]).
    `bias` [X] (DeepSeek-V3's e_score_correction_bias) is added to the scores for choosing only; the
    weights are the scores of the chosen. `groups` (n_group, topk_group, score), None for none:
    the experts split into n_group equal groups, each scored by its "max" (DeepSeek-V2's
    group_limited_greedy: the other groups' scores set to 0, the weights taken from those) or the
    sum of its best two (DeepSeek-V3: the other groups' experts never chosen, the weights their
    unmasked scores; "top2_zero", A.X-K2: their choice scores 0, below which an allowed expert's may
    fall); only the topk_group best groups' experts may be chosen."""
    choice = scores if bias is None else scores + bias
    if groups is not None:
        n_group, picked, score = groups
        grouped = choice.reshape(choice.shape[0], n_group, -1)
        group_scores = jnp.max(grouped, axis=-1) if score == "max" else jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)
        best = jax.lax.top_k(group_scores, picked)[1]
        allowed = jnp.repeat(jnp.sum(jax.nn.one_hot(best, n_group, dtype=jnp.int32), axis=-2) > 0, grouped.shape[-1], axis=-1)
        if score == "max":
            scores = choice = jnp.where(allowed, choice, 0.0)
        elif score == "top2_zero":
            choice = jnp.where(allowed, choice, 0.0)
        else:
            choice = jnp.where(allowed, choice, -jnp.inf)
    experts = jax.lax.top_k(choice, k)[1]
    return jnp.take_along_axis(scores, experts, axis=-1), experts


def sparsemixer(logits, jitter: float):
    """PhiMoE's router in inference (transformers' `sparsemixer`, training off): two picks, the best
    logit, then the best of the others. Each pick's weight is its softmax over the logits s it keeps:
    those not yet taken with (best - s) / max(|s|, best) <= 2 * jitter. logits [N, X] float32 ->
    (weights [N, 2], expert ids [N, 2])."""

    def pick(scores):  # scores: the logits, those already taken at -inf
        best = jnp.max(scores, axis=-1, keepdims=True)
        kept = jnp.where((best - logits) / jnp.maximum(jnp.abs(logits), best) > 2 * jitter, -jnp.inf, scores)
        expert = jnp.argmax(scores, axis=-1)
        return jnp.take_along_axis(jax.nn.softmax(kept, axis=-1), expert[:, None], axis=-1)[:, 0], expert

    w1, first = pick(logits)
    w2, second = pick(jnp.where(jax.nn.one_hot(first, logits.shape[-1], dtype=bool), -jnp.inf, logits))
    return jnp.stack([w1, w2], axis=-1), jnp.stack([first, second], axis=-1)


# ragged_dot reads every expert of the stack whatever the tokens (XLA's GPU form pads the groups;
# on an H200 a Qwen3-30B-A3B layer's experts take 323 us for one token, whose 8 experts are 27 us
# of reads), so a decode step with few (token, expert) assignments takes each assignment's expert
# matrices on their own ("gather": 113 us) while GATHER_BELOW times the assignments is under the
# experts; each gathered assignment costs about 3 expert reads, and the gather loses from there
# (Mixtral-8x7B, 2 tokens: 1,113 us against 721). benchmarks/moe_probe.py; docs/benchmarks.md.
GATHER_BELOW = 2


def expert_form(assignments: int, experts: int) -> str:
    """How `MoE._experts` runs `assignments` (token, expert) pairs over `experts` local experts."""
    return "gather" if assignments * GATHER_BELOW < experts else "ragged"


def split_experts(module, mesh, axis: str | None) -> None:
    """Tell every MoE block of `module` that mesh axis `axis` of `mesh` splits its experts (the
    loader, placing a model: axis is jaxllm.sharding.RULES["expert"]); no mesh, no such axis or
    one of size 1: the blocks run all their experts as on one device."""
    on = mesh is not None and axis is not None and mesh.shape.get(axis, 1) > 1
    for _, node in nnx.iter_graph(module):
        if isinstance(node, MoE):
            node.expert_mesh, node.expert_axis = (mesh, axis) if on else (None, None)


def make_mlp(cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
    """The feed-forward block of one decoder layer: routed experts, a dense gated MLP, or an
    ungated one (`cfg.gated_mlp` False: Arcee), its biases as mlp_bias says; the layer's own width and
    gate sparsity where the config gives them per layer (Gemma 3n)."""
    if cfg.layer_is_moe(layer):
        return MoE(cfg, dtype=dtype, rngs=rngs)
    if cfg.intermediate_sizes:  # a width per layer (Gemma 3n)
        cfg = cfg.replace(intermediate_size=cfg.layer_intermediate_size(layer))
    if not cfg.gated_mlp:
        return MLP(cfg, dtype=dtype, rngs=rngs, bias=cfg.mlp_bias)
    return GatedMLP(cfg, dtype=dtype, rngs=rngs, sparsity=cfg.activation_sparsity[layer] if cfg.activation_sparsity else 0.0)
