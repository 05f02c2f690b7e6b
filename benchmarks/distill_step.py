"""What the teacher-logit cache saves, measured in one process on the same batches:

  (a) plain student fine-tuning step           (CE on gold spans only)
  (b) distillation step, teacher online        (teacher forward every step + KD loss)
  (c) distillation step, cached teacher logits (KD loss on stored fp16 logits; no teacher)

Prints samples/s for each and the cost ratios b/a and c/a (time per sample relative to plain
fine-tuning; the cache's target is c/a <= 1.05), the peak memory of a trial in each mode (each mode in
its own subprocess: the cached trial never holds the teacher), and the time of one ``prepare``
(teacher forward over N features). Results go to benchmarks/results/ with the machine description.

    python benchmarks/distill_step.py                      # CPU: MiniLM-L6 teacher -> 3-layer student
    python benchmarks/distill_step.py --device cuda        # GPU: bert-base -> distilbert-base, seq 384, bf16

Random weights are fine for timing; shapes are what matter.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForQuestionAnswering, DistilBertConfig, DistilBertForQuestionAnswering

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raykd import tasks
from raykd.modeling import losses, models

MODES = ("plain", "online", "cached")


# (hidden, heads, intermediate, teacher layers) of the random-weight BERTs timed on CPU.
CPU_SHAPES = {"minilm": (384, 12, 1536, 6), "tiny": (64, 2, 128, 4)}


def _bert(arch: str, layers: int):
    hidden, heads, inter, _ = CPU_SHAPES[arch]
    return BertForQuestionAnswering(BertConfig(hidden_size=hidden, num_hidden_layers=layers,
                                               num_attention_heads=heads, intermediate_size=inter))


def build_teacher(arch: str):
    """Random-weight teacher: bert-base shape on GPU, MiniLM-L6-H384 shape on CPU."""
    return BertForQuestionAnswering(BertConfig()) if arch == "real" else _bert(arch, CPU_SHAPES[arch][3])


def build_student(arch: str):
    """distilbert-base shape on GPU; on CPU half the teacher's layers (the quickstart's student)."""
    if arch == "real":
        return DistilBertForQuestionAnswering(DistilBertConfig())
    return _bert(arch, CPU_SHAPES[arch][3] // 2)


def batches(n: int, batch_size: int, seq: int, vocab: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        q = 16
        lengths = torch.randint(seq // 2, seq + 1, (batch_size,), generator=g)
        ids = torch.randint(1000, vocab, (batch_size, seq), generator=g)
        att = (torch.arange(seq)[None] < lengths[:, None]).long()
        tt = ((torch.arange(seq)[None] > q) & att.bool()).long()
        span = tt.bool().clone()
        span[:, 0] = True
        start = torch.randint(q + 1, seq // 2, (batch_size,), generator=g)
        out.append({k: v.to(device) for k, v in {
            "input_ids": ids * att, "attention_mask": att, "token_type_ids": tt, "span_mask": span,
            "start_positions": start, "end_positions": start + 2}.items()})
    return out


def step_fn(mode, student, teacher, names_s, names_t, opt, amp, device, alpha_ce=0.5, temperature=2.0):
    qa = tasks.get("question_answering")  # the task the loop would ask for logits, mask and hard loss

    def step(batch, cached=None):
        with torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = models.forward(student, batch, names_s)
            teacher_logits = None
            if mode == "online":
                with torch.no_grad():
                    teacher_logits = qa.logits(models.forward(teacher, batch, names_t))
            elif mode == "cached":
                teacher_logits = cached
        logits = qa.logits(out)
        loss = losses.distillation_loss(
            logits, qa.hard_loss(logits, batch), mask=qa.mask(batch), teacher_logits=teacher_logits,
            temperature=temperature, alpha_ce=0.0 if mode == "plain" else alpha_ce,
            alpha_hard=1.0 if mode == "plain" else 1 - alpha_ce,
        )["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_modes(args, device, amp):
    """Interleaved rounds of every mode on the same batches; median samples/s per mode."""
    teacher = build_teacher(args.arch).to(device).eval()
    student = build_student(args.arch).to(device).train()
    data = batches(args.steps, args.batch_size, args.seq_len, teacher.config.vocab_size, device)
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
        # What `prepare` stores: fp16 start/end logits of every feature.
        cached = [torch.stack([o.start_logits, o.end_logits], 1).half()
                  for o in (models.forward(teacher, b, models.accepted_inputs(teacher)) for b in data)]
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    names_s, names_t = models.accepted_inputs(student), models.accepted_inputs(teacher)
    steps = {m: step_fn(m, student, teacher, names_s, names_t, opt, amp, device) for m in MODES}
    for m in MODES:  # warm-up
        for b, c in list(zip(data, cached))[: args.warmup]:
            steps[m](b, c)
    rates = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for m in MODES:
            sync(device)
            t0 = time.perf_counter()
            for b, c in zip(data, cached):
                steps[m](b, c)
            sync(device)
            rates[m].append(args.steps * args.batch_size / (time.perf_counter() - t0))
    return {m: statistics.median(r) for m, r in rates.items()}


def peak_memory_child(args, mode, device, amp) -> float:
    """Peak memory (MiB) of a trial-like process in one mode: GPU allocator peak on CUDA; on CPU the
    peak resident set from model construction on (the high-water mark is reset after imports).
    In cached mode the teacher is never built, as in a real trial."""
    if device.type == "cpu":
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    student = build_student(args.arch).to(device).train()
    teacher = build_teacher(args.arch).to(device).eval() if mode == "online" else None
    vocab = student.config.vocab_size
    data = batches(3, args.batch_size, args.seq_len, vocab, device)
    cached = [torch.randn(args.batch_size, 2, args.seq_len, device=device).half() for _ in data]
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    names_t = models.accepted_inputs(teacher) if teacher is not None else ()
    step = step_fn(mode, student, teacher, models.accepted_inputs(student), names_t, opt, amp, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for b, c in zip(data, cached):
        step(b, c)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


def prepare_time(args, device, amp) -> dict:
    """One `prepare`: the teacher over N features, batched, fp16 out (as raykd.teacher_cache does)."""
    teacher = build_teacher(args.arch).to(device).eval()
    bs = 256 if device.type == "cuda" else 32
    data = batches(max(1, args.prepare_features // bs), bs, args.seq_len, teacher.config.vocab_size, device, seed=1)
    names = models.accepted_inputs(teacher)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast(device_type=device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for b in data:
            o = models.forward(teacher, b, names)
            torch.stack([o.start_logits, o.end_logits], 1).half().cpu()
    sync(device)
    n = len(data) * bs
    secs = time.perf_counter() - t0
    return {"features": n, "seconds": secs, "features_per_s": n / secs}


def machine(device) -> str:
    desc = f"{platform.platform()}; {platform.processor() or platform.machine()}; torch {torch.__version__}; " \
           f"threads {torch.get_num_threads()}"
    if device.type == "cuda":
        desc += f"; GPU {torch.cuda.get_device_name()}"
    return desc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--arch", default=None, choices=["tiny", "minilm", "real"],
                   help="default: real on cuda, minilm on cpu")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="batches per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--prepare-features", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--memory-child", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    gpu = args.device == "cuda"
    args.arch = args.arch or ("real" if gpu else "minilm")
    args.batch_size = args.batch_size or (32 if gpu else 8)
    args.seq_len = args.seq_len or (384 if gpu else 128)
    args.steps = args.steps or (20 if gpu else 6)
    args.prepare_features = args.prepare_features or (8192 if gpu else 256)
    device = torch.device(args.device)
    amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if gpu else None

    if args.memory_child:
        print(json.dumps({"peak_mib": peak_memory_child(args, args.memory_child, device, amp)}))
        return

    rates = time_modes(args, device, amp)
    cost = {m: rates["plain"] / rates[m] for m in MODES}  # time per sample relative to plain
    memory = {}
    for m in MODES:
        child = subprocess.run([sys.executable, __file__, "--memory-child", m, "--device", args.device,
                                "--arch", args.arch, "--batch-size", str(args.batch_size),
                                "--seq-len", str(args.seq_len)], capture_output=True, text=True, check=True)
        memory[m] = json.loads(child.stdout.strip().splitlines()[-1])["peak_mib"]
    prep = prepare_time(args, device, amp)
    result = {
        "machine": machine(device), "device": args.device, "arch": args.arch, "batch_size": args.batch_size,
        "seq_len": args.seq_len, "precision": str(amp).replace("torch.", "") if amp else "fp32",
        "samples_per_s": rates, "cost_b_over_a": cost["online"], "cost_c_over_a": cost["cached"],
        "peak_memory_mib": memory, "prepare": prep,
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    lines = [
        f"# distill_step ({args.device}, {args.arch}, batch {args.batch_size}, seq {args.seq_len}, {result['precision']})",
        "", f"Machine: {result['machine']}", f"Command: `{result['command']}`", "",
        "| mode | samples/s | cost vs plain | peak memory (MiB) |", "| --- | --- | --- | --- |",
    ]
    labels = {"plain": "(a) plain fine-tuning", "online": "(b) distill, teacher online",
              "cached": "(c) distill, cached logits"}
    for m in MODES:
        lines.append(f"| {labels[m]} | {rates[m]:.1f} | {cost[m]:.3f} | {memory[m]:.0f} |")
    lines += ["", f"b/a = {cost['online']:.3f}, c/a = {cost['cached']:.3f} (time per sample; target c/a <= 1.05)",
              (f"prepare: teacher over {prep['features']} features in {prep['seconds']:.2f} s "
               f"({prep['features_per_s']:.0f} features/s)")]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"distill_step-{args.device}-{args.arch}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
