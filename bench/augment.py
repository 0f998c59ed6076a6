"""Does augmentation help the rare experts? Each augmented expert trained with and without its synthetic examples,
scored on real held-out notes only (ROUGE-L of greedy summaries and target loss per token).

    .venv/bin/python bench/augment.py [--root DIR] [--json augment.json]
    .venv/bin/python bench/augment.py --cost [--root DIR]

--cost: what augmentation adds to the default `make run` (params.yaml as shipped, SmolLM2, the sample corpus):
the augment stage's seconds, plus the extra training of each augmented expert (augment.keep auto against never).

The project (a fresh directory unless --root holds one already) reads ../shared/data/mtsamples with ENT and
Hematology-Oncology as experts of their own beside Gastroenterology (presets/augment-mtsamples.yaml). Steps, all
with the pipeline's own code:
1. the stages up to validate;
2. the multi-task adapter on the real training notes of every expert (`retrain-expert multitask`): the generator,
   as `augment.generator: multitask` uses once a multi-task expert is champion;
3. the augment stage with that adapter as the generator;
4. each augmented expert retrained (starting from the multi-task adapter, as the preset says) with augment.keep
   never, then always;
5. both adapters of each expert scored on the expert's validation and test notes.
Experts that are not augmented get the same data either way (synthetic examples feed their own expert only, and
the multi-task adapter trains on real notes only), so their adapters do not change.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

import pandas as pd
import torch
from peft import PeftModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.layout import ADAPTERS_DIR, VALIDATED_DIR  # noqa: E402
from tasks.base_model import load_base  # noqa: E402
from tasks.evaluate.metrics import rouge_l  # noqa: E402
from tasks.finetune.examples import Request, tokenize_example  # noqa: E402
from tasks.finetune.inference import AdapterEngine, generate, target_token_losses  # noqa: E402
from tasks.params import MULTITASK_EXPERT, apply_overrides, load_params  # noqa: E402

PRESET = ROOT / "presets" / "augment-mtsamples.yaml"
SHARED = ROOT.parent / "shared" / "data"  # the preset's paths are relative to the project; the bench's project is elsewhere
GENERATOR_DIR = Path("models/generator-multitask")


def cpu_flags() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "AVX-512 BF16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else platform.machine()


def project(root: Path | None) -> Path:
    if root is not None and (root / "params.yaml").exists():
        return root
    from tests.conftest import make_project

    directory = root or Path(tempfile.mkdtemp(prefix="medlora-augment-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    make_project(directory, preset="mtsamples")
    apply_overrides(directory, str(PRESET), assignments=[
        "experts={gastro: [Gastroenterology], ent: [ENT - Otolaryngology], hematology: [Hematology - Oncology]}",
        "route.compose.specialties={}", f"input.path={SHARED / 'mtsamples' / 'mtsamples.csv'}",
        f"finetune.task_experts.pubmedqa.path={SHARED / 'pubmedqa' / 'pqal.json'}"])
    return directory


def timed(label: str, call):
    started = time.perf_counter()
    result = call()
    print(f"  {label}: {time.perf_counter() - started:.1f} s", flush=True)
    return result


def scores(params, root: Path, adapter: Path, notes: pd.DataFrame) -> dict:
    settings = params.finetune
    tokenizer, base = load_base(params.base_model, root)
    model = PeftModel.from_pretrained(base, adapter).eval()
    requests = [Request(text=t) for t in notes["text"]]
    outputs = generate(model, tokenizer, requests, settings.max_source_tokens, settings.max_target_tokens,
                       settings.generation_batch_size, precision=settings.precision)
    examples = [tokenize_example(tokenizer, r, t, settings.max_source_tokens, settings.max_target_tokens)
                for r, t in zip(requests, notes["target"])]
    losses = target_token_losses(AdapterEngine(model, tokenizer, precision=settings.precision), requests, examples,
                                 settings.batch_size)
    return {"notes": len(notes), "rouge_l": round(mean(rouge_l(o, t) for o, t in zip(outputs, notes["target"])), 4),
            "target_loss": round(sum(loss for loss, _ in losses) / sum(count for _, count in losses), 4)}


def default_run_cost(root: Path | None) -> int:
    from flows.finetune import retrain_expert_flow
    from flows.pipeline import run_stage
    from tests.conftest import make_project

    if root is None or not (root / "params.yaml").exists():
        root = root or Path(tempfile.mkdtemp(prefix="medlora-augment-cost-"))
        root.mkdir(parents=True, exist_ok=True)
        make_project(root, preset="tiny")
        shutil.copy(ROOT / "params.yaml", root / "params.yaml")  # the default run: no preset
    print(f"project {root}; {cpu_flags()}, {torch.get_num_threads()} torch threads", flush=True)
    for stage in ("corpus", "prepare_base", "ingest", "deidentify", "validate"):
        timed(f"stage {stage}", lambda: run_stage(stage, root))
    augment_seconds = timed("stage augment", lambda: run_stage("augment", root)).seconds
    report = json.loads((root / "reports" / "augment.json").read_text())
    print(json.dumps(report["metrics"], indent=1))
    extra = 0.0
    for expert in report["metrics"]["per_expert"]:
        seconds = {}
        for keep in ("never", "auto"):
            apply_overrides(root, assignments=[f"augment.keep={keep}"])
            started = time.perf_counter()
            retrain_expert_flow(root=str(root), expert=expert)
            seconds[keep] = time.perf_counter() - started
            print(f"  {expert} keep={keep}: {seconds[keep]:.1f} s", flush=True)
        extra += seconds["auto"] - seconds["never"]
    print(f"augment stage {augment_seconds:.1f} s + extra training {extra:.1f} s = {augment_seconds + extra:.1f} s "
          f"added to the default run ({cpu_flags()})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="project directory (made and run up to validate when it has no params.yaml)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--cost", action="store_true", help="time what augmentation adds to the default run")
    args = parser.parse_args()
    if args.cost:
        return default_run_cost(args.root)
    from flows.finetune import retrain_expert_flow
    from flows.pipeline import run_stage

    torch.manual_seed(0)
    root = project(args.root)
    print(f"project {root}; {cpu_flags()}, {torch.get_num_threads()} torch threads", flush=True)
    for stage in ("prepare_base", "ingest", "deidentify", "validate"):
        timed(f"stage {stage}", lambda: run_stage(stage, root))
    if not (root / GENERATOR_DIR / "adapter_config.json").exists():
        augmented = load_params(root).augment.min_train_notes
        apply_overrides(root, assignments=["augment.min_train_notes=0"])  # the real training notes alone, for now
        timed("stage augment (nothing added)", lambda: run_stage("augment", root))
        apply_overrides(root, assignments=[f"augment.min_train_notes={augmented}"])
        timed("multi-task adapter (the generator)", lambda: retrain_expert_flow(root=str(root), expert=MULTITASK_EXPERT))
        shutil.copytree(root / ADAPTERS_DIR / MULTITASK_EXPERT, root / GENERATOR_DIR, dirs_exist_ok=True)
    apply_overrides(root, assignments=[f"augment.generator={GENERATOR_DIR}"])
    timed("stage augment", lambda: run_stage("augment", root))
    report = json.loads((root / "reports" / "augment.json").read_text())
    counts = {e: {k: v for k, v in c.items() if v} for e, c in report["metrics"]["per_expert"].items()}
    print(json.dumps(counts, indent=1), flush=True)

    params = load_params(root)
    experts = sorted(counts)
    variants = {"without": "never", "with": "always"}
    for variant, keep in variants.items():
        apply_overrides(root, assignments=[f"augment.keep={keep}"])
        for expert in experts:
            timed(f"{expert} {variant} augmentation", lambda: retrain_expert_flow(root=str(root), expert=expert))
            shutil.copytree(root / ADAPTERS_DIR / expert, root / "models" / "bench-augment" / variant / expert, dirs_exist_ok=True)

    splits = {s: pd.read_parquet(root / VALIDATED_DIR / f"{s}.parquet") for s in ("val", "test")}
    rows = []
    for expert in experts:
        for variant in variants:
            adapter = root / "models" / "bench-augment" / variant / expert
            row = {"expert": expert, "augmentation": variant,
                   "train_examples": json.loads((adapter / "training.json").read_text())["train_examples"]}
            for split, frame in splits.items():
                figures = scores(params, root, adapter, frame[frame["expert"] == expert])
                row |= {f"{split}_{k}": v for k, v in figures.items()}
            rows.append(row)
            print(row, flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    gains = {e: round(float(table[(table.expert == e) & (table.augmentation == "with")]["test_rouge_l"].iloc[0]
                            - table[(table.expert == e) & (table.augmentation == "without")]["test_rouge_l"].iloc[0]), 4)
             for e in experts}
    print("test ROUGE-L gain with augmentation:", gains)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_flags(), "counts": counts, "rows": rows, "gains": gains,
                                         "augment_stage_seconds": report["seconds"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
