"""Stage: write the synthetic sample corpus (notes with PHI, gold spans) into the PHI zone."""

from prefect import flow, task

from flows.stage_runtime import stage_run
from tasks.corpus.generate import generate_corpus, write_corpus


@task(persist_result=False)
def write_sample_corpus(output_dir, notes: int, patients: int, seed: int) -> dict:
    return write_corpus(generate_corpus(notes, patients, seed), output_dir)


@flow(name="corpus", persist_result=False)
def corpus_flow(root: str = "."):
    with stage_run("corpus", root) as (root, params, report):
        summary = write_sample_corpus(root / params.corpus.output_dir, params.corpus.notes, params.corpus.patients, params.seed)
        report.records_out = summary["notes"]
        report.metrics = {k: v for k, v in summary.items() if k != "notes"}
    return report
