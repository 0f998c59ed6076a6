from tasks.corpus.generate import generate_corpus, read_gold_spans, write_corpus

HIPAA_TYPES = {"PATIENT", "RELATIVE", "CLINICIAN", "DATE", "AGE", "PHONE", "FAX", "EMAIL", "MRN", "SSN",
               "HEALTH_PLAN", "ACCOUNT", "LICENSE", "STREET", "CITY", "ZIP", "HOSPITAL", "URL", "IP", "DEVICE_ID"}


def test_default_corpus_covers_every_phi_category_specialty_and_casing():
    corpus = generate_corpus(notes=300, patients=120, seed=13)
    assert len(corpus) == 300
    assert len({n.specialty for n in corpus}) >= 6
    assert {s.entity_type for n in corpus for s in n.spans} == HIPAA_TYPES
    assert any(n.text.isupper() for n in corpus) and any(n.text.islower() for n in corpus)
    assert all(n.target and n.target.endswith(".") for n in corpus)


def test_gold_spans_point_at_their_text_and_targets_carry_no_phi():
    for note in generate_corpus(notes=60, patients=20, seed=3):
        for span in note.spans:
            assert note.text[span.start : span.end] == span.text
            if span.entity_type in ("PATIENT", "SSN", "MRN", "EMAIL"):
                assert span.text.lower() not in note.target.lower()


def test_same_seed_same_corpus_other_seed_other_corpus(tmp_path):
    first, second = generate_corpus(40, 10, seed=5), generate_corpus(40, 10, seed=5)
    assert [n.text for n in first] == [n.text for n in second]
    assert [n.text for n in generate_corpus(40, 10, seed=6)] != [n.text for n in first]
    summary = write_corpus(first, tmp_path)
    gold = read_gold_spans(tmp_path)
    assert summary["phi_spans"] == sum(len(spans) for spans in gold.values())
    assert set(gold) == {n.note_id for n in first}
