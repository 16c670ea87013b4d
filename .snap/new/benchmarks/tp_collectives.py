"""Census of the collectives XLA puts into the paged engine's steps on a mesh (issue 15).

Builds a random Llama-shaped model on a mesh, serves one short batch-1 request through an Engine
(so the prefill and decode steps compile), with XLA dumping every compiled module as text, then
reads the optimized (post-SPMD-partitioner) HLO of the decode and prefill steps and prints, per
collective (all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute, and their
async -start forms): where it runs (once per call, or per decode step inside the while loop),
its per-device shape and bytes, how many per layer / per step, and the source op (the JAX
op_name and file:line that the HLO metadata names). Also: large copies inside the decode loop
(a resharded or copied KV pool would show here), and which entry parameters arrive sharded.

The target shape of a tensor-parallel decode step: 2 all-reduces per layer ([B, 1, E]: after
o_proj and after down_proj) and one gather of the logits per step; nothing else.

    python benchmarks/tp_collectives.py --mesh tp=2                  # small model, on CPU
    python benchmarks/tp_collectives.py --mesh tp=1                  # the baseline: none expected
    python benchmarks/tp_collectives.py --mesh tp=2 --shape llama3-8b --layers 2   # on GPUs
    python benchmarks/tp_collectives.py --mesh tp=2 --show-hlo       # + each collective's HLO line

On a CPU the devices are simulated (XLA's --xla_force_host_platform_device_count is set to the
mesh's size unless XLA_FLAGS already sets it); the mesh takes the first N devices. The CPU runs
the same SPMD partitioner as the GPU for the same shardings; GPU-only passes (async collectives,
all-reduce/all-gather combiners, reduce-scatter creation, the cuDNN attention kernels'
custom partitioning with --attention cudnn) can change the forms, not the data moved.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import re
import sys
import tempfile
from collections import Counter, defaultdict

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "collective-broadcast", "ragged-all-to-all")
DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
               "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
               "c128": 16, "token": 0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mesh", default="tp=2", help="mesh spec (jaxllm.sharding.make_mesh), over the first N devices")
    p.add_argument("--shape", default="small", help="'small' (the flags below) or a name of jaxllm.random_model.SHAPES")
    p.add_argument("--layers", type=int, default=None, help="override the number of layers (default: small 4, named shapes their own)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1024)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--tie", action="store_true", help="tied embeddings (the head is the embedding table)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--kv-dtype", default=None, help="None, int8, fp8")
    p.add_argument("--attention", default=None, help="xla / cudnn (default: jaxllm.runtime's choice for the platform)")
    p.add_argument("--prompt", type=int, default=40, help="prompt tokens (one request, batch 1)")
    p.add_argument("--new", type=int, default=8, help="new tokens")
    p.add_argument("--batch", type=int, default=1, help="engine slots")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--chunk", type=int, default=64, help="decode steps per call (bench's batch-1 setting)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: greedy (the bench's setting); > 0 compiles the sampling path (sort over the vocabulary)")
    p.add_argument("--stage", choices=("spmd", "final", "both"), default="both",
                   help="spmd: the partitioner's output (backend-independent dtypes/forms); final: the optimized "
                        "module this backend runs (CPU promotes bf16 all-reduces to f32; GPU makes them async)")
    p.add_argument("--dump", default=None, help="XLA dump folder (default: a fresh temporary one)")
    p.add_argument("--show-hlo", action="store_true", help="print each distinct collective's HLO instruction")
    p.add_argument("--copies-mb", type=float, default=None,
                   help="list copies in the decode loop of at least this many MB (default: one layer's K pool shard)")
    return p.parse_args(argv)


def mesh_size(spec: str) -> int:
    if spec.strip() == "auto":
        return 0
    return math.prod(int(item.split("=")[1]) for item in spec.split(",") if item.strip())


def setup_xla(args) -> str:
    """XLA_FLAGS before JAX starts: dump optimized HLO as text; simulate the mesh's CPU devices."""
    dump = args.dump or tempfile.mkdtemp(prefix="tp_collectives_")
    os.makedirs(dump, exist_ok=True)
    flags = os.environ.get("XLA_FLAGS", "")
    flags += (f" --xla_dump_to={dump} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*(decode|prefill).*"
              " --xla_dump_hlo_pass_re=^spmd-partitioning$")
    n = mesh_size(args.mesh)
    if n and "xla_force_host_platform_device_count" not in flags:
        flags += f" --xla_force_host_platform_device_count={max(n, 1)}"
    os.environ["XLA_FLAGS"] = flags.strip()
    return dump


# ----------------------------------------------------------------------------------------------
# HLO text


class Instr:
    __slots__ = ("name", "shape", "op", "line", "op_name", "source", "comp")

    def __init__(self, name, shape, op, line, comp, frames=None):
        self.name, self.shape, self.op, self.line, self.comp = name, shape, op, line, comp
        m = re.search(r'op_name="([^"]*)"', line)
        self.op_name = m.group(1) if m else ""
        f = re.search(r'source_file="([^"]*)"', line)
        ln = re.search(r"source_line=(\d+)", line)
        sf = re.search(r"stack_frame_id=(\d+)", line)
        if f and ln:
            self.source = f"{short_path(f.group(1))}:{ln.group(1)}"
        elif sf and frames:
            self.source = frames(int(sf.group(1)))
        else:
            self.source = ""


def stack_frames(text: str, depth: int = 3):
    """A function: stack_frame_id -> 'file:line func < caller ...' from the module's FileNames,
    FunctionNames, FileLocations and StackFrames tables (newer XLA puts source positions there;
    an entry's parent_frame_id is the parent's id + 1, 0 for none)."""
    def section(name):
        m = re.search(rf"^{name}\n(.*?)(?:\n\n|\n(?=[A-Z]))", text, re.S | re.M)
        return m.group(1).splitlines() if m else []

    files = {int(row.split()[0]): row.split(None, 1)[1].strip('"') for row in section("FileNames") if row.strip()}
    funcs = {int(row.split()[0]): row.split(None, 1)[1].strip('"') for row in section("FunctionNames") if row.strip()}
    locs, frames = {}, {}
    for row in section("FileLocations"):
        m = re.match(r"(\d+) \{file_name_id=(\d+) function_name_id=(\d+) line=(\d+)", row)
        if m:
            locs[int(m[1])] = f"{short_path(files.get(int(m[2]), '?'))}:{m[4]} {funcs.get(int(m[3]), '?')}"
    for row in section("StackFrames"):
        m = re.match(r"(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)", row)
        if m:
            frames[int(m[1])] = (int(m[2]), int(m[3]) - 1)

    def resolve(fid):
        out, seen = [], set()
        while fid in frames and fid not in seen and len(out) < depth:
            seen.add(fid)
            loc, fid = frames[fid]
            out.append(locs.get(loc, "?"))
        return " < ".join(out)

    return resolve if frames else None


def short_path(path: str) -> str:
    for root in ("/site-packages/", "/jaxllm/", "/models/", "/sharding/"):
        if root in path:
            i = path.rindex(root)
            return path[i + 1:] if root != "/site-packages/" else path[i + len(root):]
    return path


def shape_bytes(shape: str) -> int:
    total = 0
    for dt, dims in re.findall(r"([a-z][a-z0-9]*)\[([0-9,]*)\]", shape):
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        total += int(n * DTYPE_BYTES.get(dt, 4))
    return total


def plain_shape(shape: str) -> str:
    return re.sub(r"\{[^}]*\}", "", shape)  # drop layouts


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*(\(.*\))?\s*->.*\{\s*$")


def parse_hlo(text: str):
    """{computation: [Instr]}, the entry's name, and {computation: {computations it calls}}."""
    comps, calls, entry, cur = {}, defaultdict(set), None, None
    frames = stack_frames(text)
    for line in text.splitlines():
        h = _HEADER.match(line)
        if h and not line.startswith(" "):
            cur = h.group(2)
            comps[cur] = []
            if h.group(1):
                entry = cur
            continue
        if cur is None:
            continue
        if line.strip() == "}":
            cur = None
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        ins = Instr(m.group(1), m.group(2), m.group(3), line.strip(), cur, frames)
        comps[cur].append(ins)
        for key in ("body", "condition", "calls", "to_apply", "true_computation", "false_computation"):
            for callee in re.findall(rf"\b{key}=%?([\w.\-]+)", line):
                calls[cur].add(callee)
        for group in re.findall(r"(?:branch_computations|called_computations)=\{([^}]*)\}", line):
            calls[cur].update(c.strip().lstrip("%") for c in group.split(","))
    return comps, entry, calls


def closure(root, calls):
    seen, todo = set(), [root]
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        todo.extend(calls.get(c, ()))
    return seen


def loop_depths(comps, entry, calls):
    """{computation: the number of while loops around it} (the entry's own loops' bodies: 1)."""
    depth = {entry: 0}
    order = [entry]
    while order:
        c = order.pop()
        for ins in comps.get(c, []):
            callees = set(re.findall(r"\b(?:body|condition|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)", ins.line))
            for group in re.findall(r"(?:branch_computations|called_computations)=\{([^}]*)\}", ins.line):
                callees.update(x.strip().lstrip("%") for x in group.split(","))
            for callee in callees:
                d = depth[c] + (1 if ins.op == "while" else 0)
                if callee not in depth or depth[callee] < d:
                    depth[callee] = d
                    order.append(callee)
    return depth


def is_collective(op: str) -> str | None:
    base = op[:-6] if op.endswith("-start") else op
    if op.endswith("-done"):
        return None
    return base if base in COLLECTIVES else None


def describe_source(ins: Instr) -> str:
    name = ins.op_name
    # keep the tail that says what the op is: drop jit wrappers and while/body scaffolding
    parts = [p for p in name.split("/") if p and not p.startswith("jit(") and p not in ("while", "body", "cond")]
    tail = "/".join(parts[-3:])
    return f"{tail} @ {ins.source}" if ins.source else tail


def replica_groups(line: str) -> str:
    m = re.search(r"replica_groups=(mesh\[[^\]]*\] \{[^}]*\}|\{[^=]*?\}\}|\[[^\]]*\]<=\[[^\]]*\](?:T\([^)]*\))?|\{\})", line)
    return m.group(1) if m else ""


def report_copies(comps, depth, copies_bytes: int) -> None:
    """Large copies/transposes inside loop bodies: a resharded or copied KV pool, weights moved each step."""
    big = Counter()
    for comp, instrs in comps.items():
        if depth.get(comp, 0) < 1:
            continue
        for ins in instrs:
            if ins.op in ("copy", "copy-start", "transpose") and shape_bytes(ins.shape) >= copies_bytes:
                big[(ins.op, plain_shape(ins.shape), describe_source(ins))] += 1
    if big:
        print(f"  large copies/transposes in loop bodies (>= {copies_bytes:,} bytes):")
        for (op, shape, src), n in big.most_common():
            print(f"    {n:>4} x {op} {shape} ({shape_bytes(shape):,} B)  <- {src}")
    else:
        print(f"  no copy/transpose of >= {copies_bytes:,} bytes inside loop bodies")


def census(path: str, num_layers: int, show_hlo: bool, copies_bytes: int | None, title: str) -> dict:
    with open(path) as f:
        text = f.read()
    comps, entry, calls = parse_hlo(text)
    depth = loop_depths(comps, entry, calls)
    print(f"\n=== {title}: {os.path.basename(path)}")
    rows = defaultdict(list)  # (where, kind, shape, source) -> [Instr]
    for comp, instrs in comps.items():
        if comp not in depth:
            continue  # reducers etc. not reached through a call we know; collectives never live there
        for ins in instrs:
            kind = is_collective(ins.op)
            if kind is None:
                continue
            where = {0: "per call", 1: "per step (loop body)"}.get(depth[comp], f"nested loop x{depth[comp]}")
            rows[(where, kind, plain_shape(ins.shape), describe_source(ins))].append(ins)
    if not rows:
        print("  no collectives")
    per_step = Counter()
    step_bytes = 0
    print(f"  {'where':<21} {'collective':<19} {'count':>5} {'/layer':>6} {'bytes each':>11}  shape (per device)  <- source op")
    for (where, kind, shape, source), instrs in sorted(rows.items(), key=lambda kv: (kv[0][0], -len(kv[1]), kv[0][1])):
        n, b = len(instrs), shape_bytes(shape)
        per_layer = f"{n / num_layers:.2g}" if n >= num_layers else "-"
        print(f"  {where:<21} {kind:<19} {n:>5} {per_layer:>6} {b:>11,}  {shape}  <- {source}")
        print(f"  {'':<21} {'':<19} {'':>5} {'':>6} {'':>11}  groups {replica_groups(instrs[0].line)}")
        if show_hlo:
            print("      " + instrs[0].line[:600])
        if where.startswith("per step"):
            per_step[kind] += n
            step_bytes += n * b
    if per_step:
        print(f"  per decode step: {dict(per_step)}; {step_bytes:,} bytes moved by collectives "
              f"(per device, output sizes); target: all-reduce {2 * num_layers} (2 x {num_layers} layers) + 1 logits gather")
    if copies_bytes is not None:
        report_copies(comps, depth, copies_bytes)
    params = [i for i in comps[entry] if i.op == "parameter"]
    print(f"  entry parameters: {len(params)}, {sum(shape_bytes(i.shape) for i in params):,} bytes per device")
    return {"rows": rows, "per_step": per_step, "params": params}


def main(argv=None):
    args = parse_args(argv)
    dump = setup_xla(args)

    import jax
    import numpy as np

    from jaxllm.engine import Engine, Request
    from jaxllm.random_model import SHAPES, random_model
    from jaxllm.sampling import SamplingParams
    from jaxllm.sharding import describe, make_mesh

    if args.shape == "small":
        raw = dict(architectures=["LlamaForCausalLM"], vocab_size=args.vocab, hidden_size=args.hidden,
                   intermediate_size=args.intermediate, num_hidden_layers=args.layers or 4,
                   num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
                   max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0,
                   tie_word_embeddings=args.tie)
    else:
        raw = dict(SHAPES[args.shape])
        if args.layers:
            raw["num_hidden_layers"] = args.layers
    n = mesh_size(args.mesh) or len(jax.devices())
    mesh = make_mesh(args.mesh, devices=jax.devices()[:n])
    print(f"backend {jax.default_backend()}, {len(jax.devices())} devices; mesh {describe(mesh)} over {n}; "
          f"jax {jax.__version__}; dump {dump}")
    model = random_model(raw, dtype=args.dtype, mesh=mesh, kv_dtype=args.kv_dtype)
    cfg = model.config
    print(f"model: {cfg.num_layers} layers, hidden {cfg.hidden_size}, mlp {cfg.intermediate_size}, heads "
          f"{cfg.num_heads}/{cfg.num_kv_heads} kv x {cfg.head_dim}, vocab {cfg.vocab_size}, {args.dtype}, "
          f"tied {cfg.tie_word_embeddings}")
    shown = set()
    print("parameter shardings (one layer):")
    for path, leaf in jax.tree_util.tree_flatten_with_path(model.params)[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        name = "/".join("N" if k.isdigit() else k for k in keys if k != "value")
        if name in shown:
            continue
        shown.add(name)
        sh = getattr(leaf, "sharding", None)
        print(f"  {name:<60} {str(leaf.shape):<18} {getattr(sh, 'spec', sh)}")

    max_len = args.prompt + args.new + args.page_size
    pages = args.batch * -(-max_len // args.page_size)
    engine = Engine(model, batch_size=args.batch, max_len=max_len, num_pages=pages, page_size=args.page_size,
                    prefill_tokens=max(64, args.prompt), chunk=args.chunk, attention=args.attention)
    rng = np.random.default_rng(0)
    p = SamplingParams(max_new_tokens=args.new, ignore_eos=True, temperature=args.temperature).resolved()
    out = 0
    for ev in engine.run([Request(rng.integers(0, cfg.vocab_size, args.prompt).tolist(), p)]):
        out += len(ev.tokens)
    print(f"served 1 request: {args.prompt} prompt tokens, {out} new; attention {engine.runner.attention}")

    kv_itemsize = np.dtype(engine.runner.kv_dtype[0]).itemsize
    tp = mesh.shape["tp"]
    kv_shard = cfg.num_kv_heads // tp if cfg.num_kv_heads % tp == 0 else cfg.num_kv_heads
    pool_pages = engine.runner._sizes[1]
    pool_layer = pool_pages * args.page_size * kv_shard * cfg.head_dim * kv_itemsize
    copies = int(args.copies_mb * 1e6) if args.copies_mb is not None else pool_layer
    print(f"one layer's K pool per device: [{pool_pages}, {args.page_size}, {kv_shard}, {cfg.head_dim}] "
          f"{pool_layer:,} bytes")

    found = False
    stages = {"spmd": "*.after_spmd-partitioning.*.txt", "final": "*after_optimizations.txt"}
    for kind in ("decode", "prefill"):
        for stage, pattern in stages.items():
            if args.stage not in (stage, "both"):
                continue
            for path in sorted(glob.glob(os.path.join(dump, pattern))):
                base = os.path.basename(path)
                if not re.search(rf"\.jit_+{kind}\.", base):
                    continue
                found = True
                what = ("after SPMD partitioning (same on every backend)" if stage == "spmd"
                        else "optimized, as this backend runs it")
                census(path, cfg.num_layers, args.show_hlo, copies if kind == "decode" and stage == "final" else None,
                       f"{kind} step, {what}")
    if not found:
        names = [os.path.basename(f) for f in glob.glob(os.path.join(dump, "*.txt"))]
        print(f"no decode/prefill modules under {dump}: {names[:20]}")
        return 1
    print("\ntarget per decode step: 2 all-reduces [B, 1, E] per layer (o_proj, down_proj) + 1 gather of the logits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
