"""Clinical mentions in text, their negation, and the critical errors of a summary against its note.

Pure Python and deterministic, so that evaluation can run on every generated summary: about a
millisecond for a 2 KB note. A mention is a diagnosis or finding, a drug or a procedure, found by
  1. a lexicon: the phrases of our synthetic corpus generator (`tasks/corpus/clinical_content.py`)
     and the curated lists below, looked up as token n-grams, longest first (a dict lookup per
     n-gram is as fast as one compiled alternation and needs no regex backtracking);
  2. morphology for single words outside the lexicon: "-itis" is a diagnosis, "-ectomy" a
     procedure, "-olol" a drug, minus the false friends that MTSamples showed us ("diagnosis",
     "cholesterol", "program", ...).
Tokens are compared after normalisation (lower case, hyphens and spaces alike, singular), so that
"Community-acquired pneumonias" and "community acquired pneumonia" are the same term.

Negation is NegEx-like with our own cue list: a cue ("no", "denies", "negative for", ...) negates
what follows it up to the end of the clause (a period, semicolon, colon, line break, "but",
"however", "although", ...); a few cues ("was ruled out") negate what precedes them.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import cache, lru_cache

from tasks.corpus.clinical_content import CONDITIONS

KINDS = ("diagnosis", "drug", "procedure")


@dataclass(frozen=True)
class Mention:
    term: str  # normalised: lower case, single spaces ("atrial fibrillation")
    kind: str  # "diagnosis" | "drug" | "procedure"
    start: int
    end: int
    negated: bool


@dataclass(frozen=True)
class NegationCue:
    cue: str  # the cue as written in the text
    start: int  # the cue's span
    end: int
    scope_start: int  # the span it negates
    scope_end: int


@dataclass(frozen=True)
class CriticalError:
    kind: str  # "unsupported_diagnosis" | "unsupported_drug" | "unsupported_procedure" | "negation_flip"
    term: str


# --- curated vocabulary ---------------------------------------------------------------------------
# One concept a line: the canonical term first, then synonyms and abbreviations after "|". Findings
# and symptoms count as diagnoses: "denies chest pain" must be a negated mention.

DIAGNOSES = """
hypertension | high blood pressure | htn
hyperlipidemia | high cholesterol
diabetes mellitus | diabetes
type 2 diabetes mellitus | type 2 diabetes | type ii diabetes mellitus | type ii diabetes | t2dm
type 1 diabetes mellitus | type 1 diabetes | t1dm
gestational diabetes
diabetic ketoacidosis | dka
diabetic nephropathy | diabetic kidney disease
diabetic neuropathy
diabetic retinopathy
coronary artery disease | cad | coronary heart disease
myocardial infarction | heart attack | mi
st elevation myocardial infarction | stemi
non st elevation myocardial infarction | nstemi
heart failure | congestive heart failure | chf | cardiac failure
systolic heart failure
atrial fibrillation | afib
atrial flutter
unstable angina
angina | angina pectoris
aortic stenosis
mitral regurgitation
mitral valve prolapse
arrhythmia | dysrhythmia
cardiac arrest
deep vein thrombosis | deep venous thrombosis | dvt
pulmonary embolism | pulmonary embolus
peripheral vascular disease | peripheral arterial disease | pvd
aortic aneurysm | abdominal aortic aneurysm | aaa
aneurysm
stroke | cerebrovascular accident | cva
ischemic stroke
hemorrhagic stroke
transient ischemic attack | tia
intracranial hemorrhage
subarachnoid hemorrhage
subdural hematoma
chronic obstructive pulmonary disease | copd
asthma
pneumonia
community acquired pneumonia
aspiration pneumonia
pleural effusion
pneumothorax
pulmonary fibrosis
respiratory failure
acute respiratory distress syndrome | ards
obstructive sleep apnea | osa | sleep apnea
influenza | flu
covid 19 | covid
sepsis
septic shock
shock
urinary tract infection | uti
infection
abscess
hiv | human immunodeficiency virus
hepatitis c
hepatitis b
chronic kidney disease | ckd | chronic renal insufficiency
kidney disease | renal disease
acute kidney injury | aki | acute renal failure
renal failure | kidney failure
end stage renal disease | esrd
kidney stone | nephrolithiasis | renal calculus
ureteral stone | ureteral calculus
iron deficiency anemia
sickle cell disease
cancer | malignancy
breast cancer
prostate cancer
lung cancer
colon cancer | colorectal cancer
pancreatic cancer
ovarian cancer
bladder cancer
skin cancer
metastasis | metastatic disease
tumor | tumour | neoplasm
polyp
cyst
gastroesophageal reflux disease | gerd | acid reflux | reflux
peptic ulcer | peptic ulcer disease
gastrointestinal bleed | gi bleed | gastrointestinal bleeding | gastrointestinal hemorrhage
crohn's disease | crohn disease
ulcerative colitis
irritable bowel syndrome | ibs
bowel obstruction | small bowel obstruction
hernia
inguinal hernia
hiatal hernia
celiac disease
fatty liver
gallstone | cholelithiasis
hypothyroidism
hyperthyroidism
obesity
morbid obesity
rheumatoid arthritis
gout
lupus | systemic lupus erythematosus | sle
fracture
hip fracture
femoral neck fracture
meniscus tear | meniscal tear
rotator cuff tear
carpal tunnel syndrome
spinal stenosis
disc herniation | herniated disc
sprain
depression | major depressive disorder
anxiety | anxiety disorder
bipolar disorder
schizophrenia
dementia
alzheimer's disease | alzheimer disease
parkinson's disease | parkinson disease
epilepsy | seizure disorder
seizure | convulsion
migraine
delirium
alcohol use disorder | alcohol abuse | alcoholism
tobacco use | smoking
substance abuse | drug abuse
insomnia
syncope
vertigo
concussion
benign prostatic hyperplasia | bph | enlarged prostate
erectile dysfunction
urinary incontinence
preeclampsia | pre eclampsia
gestational hypertension | pregnancy induced hypertension
polycystic ovary syndrome | pcos
uterine fibroid | fibroid | uterine leiomyoma
infertility
ectopic pregnancy
miscarriage
allergic rhinitis
otitis media
glaucoma
cataract
macular degeneration
psoriasis
eczema
hypoglycemia
hyperglycemia
dehydration
malnutrition
hypotension
chest pain
shortness of breath | dyspnea
chest pressure
fever | pyrexia
chills
night sweats
nausea
vomiting
cough
headache
abdominal pain
back pain
low back pain
pain
edema
swelling
wheezing | wheeze
fatigue
weight loss
dizziness
palpitations
rash
jaundice
hemoptysis
hematemesis
melena
dysuria
constipation
diarrhea
murmur
crackles | rales
numbness
weakness
confusion
tremor
bleeding
tenderness
effusion
ascites
"""

DRUGS = """
aspirin
acetaminophen | paracetamol | tylenol
ibuprofen | motrin | advil
naproxen | naprosyn
diclofenac
celecoxib | celebrex
ketorolac | toradol
morphine
hydromorphone | dilaudid
oxycodone
hydrocodone
fentanyl
tramadol
codeine
methadone
buprenorphine
naloxone | narcan
gabapentin | neurontin
pregabalin | lyrica
metformin | glucophage
insulin
insulin glargine | lantus
insulin lispro | humalog
insulin aspart | novolog
glipizide
glyburide
glimepiride
pioglitazone
sitagliptin
empagliflozin
liraglutide
semaglutide
warfarin | coumadin
heparin
enoxaparin | lovenox
apixaban | eliquis
rivaroxaban | xarelto
dabigatran
clopidogrel | plavix
ticagrelor
prasugrel
alteplase | tpa
lisinopril
enalapril
ramipril
losartan
valsartan
metoprolol | lopressor | toprol
metoprolol tartrate
metoprolol succinate
atenolol
carvedilol | coreg
propranolol
labetalol
amlodipine | norvasc
nifedipine | procardia
diltiazem | cardizem
verapamil
hydralazine
clonidine
hydrochlorothiazide | hctz
chlorthalidone
furosemide | lasix
bumetanide
torsemide
spironolactone
digoxin
amiodarone
nitroglycerin
isosorbide mononitrate
atorvastatin | lipitor
simvastatin | zocor
rosuvastatin | crestor
pravastatin
ezetimibe
levothyroxine | synthroid
methimazole
albuterol | ventolin | proair
ipratropium
tiotropium | spiriva
fluticasone
salmeterol
fluticasone salmeterol | advair
budesonide
montelukast | singulair
prednisone
prednisolone
methylprednisolone | solu medrol
dexamethasone
hydrocortisone
omeprazole | prilosec
pantoprazole | protonix
esomeprazole
lansoprazole
famotidine | pepcid
ranitidine
ondansetron | zofran
metoclopramide | reglan
promethazine
docusate | colace
senna
polyethylene glycol | miralax
lactulose
loperamide
amoxicillin
amoxicillin clavulanate | augmentin
penicillin
ampicillin
piperacillin tazobactam | zosyn
cephalexin | keflex
cefazolin | ancef
ceftriaxone | rocephin
cefepime
azithromycin | zithromax
clarithromycin
erythromycin
doxycycline
ciprofloxacin | cipro
levofloxacin | levaquin
trimethoprim sulfamethoxazole | bactrim
nitrofurantoin | macrobid
metronidazole | flagyl
clindamycin
vancomycin
gentamicin
linezolid
meropenem
fluconazole
nystatin
acyclovir
valacyclovir
oseltamivir | tamiflu
sertraline | zoloft
fluoxetine | prozac
citalopram
escitalopram | lexapro
paroxetine
venlafaxine
duloxetine | cymbalta
bupropion | wellbutrin
trazodone
mirtazapine
amitriptyline
lithium
quetiapine | seroquel
olanzapine
risperidone
haloperidol | haldol
aripiprazole
lorazepam | ativan
diazepam | valium
alprazolam | xanax
clonazepam
zolpidem | ambien
levetiracetam | keppra
phenytoin | dilantin
valproate | valproic acid | depakote
carbamazepine
lamotrigine
topiramate | topamax
donepezil | aricept
memantine
carbidopa levodopa | sinemet
sumatriptan
tamsulosin | flomax
finasteride
oxybutynin
sildenafil | viagra
letrozole
tamoxifen
anastrozole
methotrexate
cyclophosphamide
cisplatin
doxorubicin
allopurinol
colchicine
alendronate | fosamax
hydroxychloroquine
folic acid
vitamin b12
vitamin d
thiamine
ferrous sulfate
potassium chloride
calcium gluconate
dextrose
erythropoietin | epoetin
epinephrine
norepinephrine
lidocaine
propofol
midazolam | versed
ketamine
diphenhydramine | benadryl
loratadine | claritin
cetirizine | zyrtec
fexofenadine | allegra
prenatal vitamin
"""

PROCEDURES = """
colonoscopy
upper endoscopy | esophagogastroduodenoscopy | egd
ct scan | ct | computed tomography | cat scan
mri | magnetic resonance imaging | mri scan
x ray | xray | radiograph
chest x ray | chest radiograph | cxr
ultrasound | ultrasonography | sonogram
pelvic ultrasound
echocardiogram | echocardiography
electrocardiogram | ekg | ecg
electroencephalogram | eeg
biopsy
catheterization
cardiac catheterization | heart catheterization
ct angiography
coronary artery bypass graft | cabg | bypass surgery
percutaneous coronary intervention | pci
stent placement
intubation | endotracheal intubation
mechanical ventilation
dialysis | hemodialysis
transfusion | blood transfusion
physical therapy
epidural steroid injection
thrombolysis
burr hole evacuation | burr hole
spinal fusion
anterior cervical discectomy and fusion | acdf
knee replacement | total knee arthroplasty
hip replacement | total hip arthroplasty
open reduction and internal fixation | orif
cesarean section | c section | cesarean delivery
nonstress test
ovulation induction
transurethral resection of the prostate | turp
transurethral resection
arteriovenous fistula
hernia repair
lumbar puncture | spinal tap
chemotherapy
radiation therapy | radiotherapy
surgery
resection
amputation
debridement
skin graft
incision and drainage
pap smear
stress test
pulmonary function test
cardioversion
ablation
anastomosis
"""

# Classes a summary may name for the drug the note names: "antibiotics" is supported by ceftriaxone.
# Members are names, "-suffixes" or "prefixes-".
DRUG_CLASSES = {
    "antibiotic | antimicrobial": "-cillin -mycin -micin -floxacin -oxacin -cycline -penem cef- ceph- "
    "metronidazole trimethoprim nitrofurantoin linezolid bactrim",
    "anticoagulant | anticoagulation | blood thinner": "warfarin heparin -parin -xaban dabigatran coumadin",
    "antiplatelet": "aspirin clopidogrel ticagrelor prasugrel",
    "statin": "-statin",
    "beta blocker": "-olol",
    "ace inhibitor": "-pril",
    "angiotensin receptor blocker | arb": "-sartan",
    "calcium channel blocker": "-dipine diltiazem verapamil",
    "diuretic": "furosemide bumetanide torsemide hydrochlorothiazide chlorthalidone spironolactone -thiazide",
    "steroid | corticosteroid | glucocorticoid": "-sone -solone fluticasone budesonide",
    "nsaid | anti inflammatory": "ibuprofen naproxen diclofenac celecoxib ketorolac aspirin -profen -fenac",
    "opioid | narcotic": "morphine hydromorphone oxycodone hydrocodone fentanyl tramadol codeine methadone",
    "proton pump inhibitor | ppi": "-prazole",
    "antidepressant | ssri": "sertraline fluoxetine citalopram escitalopram paroxetine venlafaxine "
    "duloxetine bupropion mirtazapine trazodone amitriptyline",
    "antiepileptic | anticonvulsant | antiseizure medication": "levetiracetam phenytoin valproate "
    "carbamazepine lamotrigine topiramate gabapentin",
    "bronchodilator": "albuterol ipratropium tiotropium salmeterol -terol -tropium",
    "antihypertensive": "-pril -sartan -olol -dipine hydralazine clonidine hydrochlorothiazide",
    "antiemetic": "ondansetron metoclopramide promethazine",
    "antihistamine": "loratadine cetirizine fexofenadine diphenhydramine",
    "thrombolytic": "alteplase tenecteplase",
}

# --- morphology for words outside the lexicon -----------------------------------------------------

SUFFIXES = {
    "procedure": (
        "ectomy ectomies otomy ostomy plasty scopy graphy ogram centesis desis rrhaphy pexy tripsy"
    ).split(),
    "drug": (
        "olol pril sartan statin mab nib cillin mycin micin floxacin oxacin cycline zole dipine apine "
        "epine parin xaban gatran vir glutide gliptin gliflozin glitazone triptan setron tidine afil "
        "semide thiazide azepam azolam profen fenac oxetine pramine triptyline caine isone asone olone "
        "terol tropium lukast grel platin rubicin trexate penem zosin sulosin dronate coxib barbital "
        "curonium peridol"
    ).split(),
    "diagnosis": (
        "itis osis iasis ectasis oma emia pathy algia plegia paresis megaly penia rrhea rrhoea rrhage "
        "uria cardia pnea plasia trophy phagia phasia cele lepsy ptysis thyroidism"
    ).split(),
}
MIN_MORPHOLOGY_LENGTH = 6

# Words with a clinical suffix that are not mentions: English words, and what the most frequent
# suffix matches over MTSamples (all 4,000 notes) showed when read by eye: anatomy ("cardia",
# "zygoma", "aponeurosis", "capitis", normal "lordosis"), the "lithotomy" position, the
# "cardioplegia" solution, "Novafil" sutures.
FALSE_FRIENDS = frozenset("""
    diagnosis prognosis hypnosis diagnoses prognoses symptomatology
    cholesterol sterol
    program diagram kilogram microgram milligram nanogram nomogram histogram hologram telegram monogram
    photography biography geography bibliography demography typography calligraphy
    dichotomy anatomy
    academia bohemia empathy sympathy telepathy nostalgia
    aroma diploma stroma stoma soma
    supine porcupine alpine figurine
    peptide polypeptide nucleotide
    cardia zygoma aponeurosis synchondrosis capitis lordosis lithotomy cardioplegia novafil anastamosis
    """.split())

# --- negation --------------------------------------------------------------------------------------

# Phrases that contain a cue but do not negate ("no change", "not ruled out"); matched first.
PSEUDO_NEGATIONS = (
    "no change", "no changes", "no interval change", "no significant change", "no increase",
    "not only", "not necessarily", "not ruled out", "not been ruled out", "cannot be ruled out",
    "cannot rule out", "could not rule out", "not be ruled out", "not excluded", "no further",
    "without difficulty", "gram negative",
)
PRE_NEGATIONS = (
    "no evidence of", "no history of", "no signs of", "no sign of", "no symptoms of",
    "no complaints of", "negative for", "free of", "absence of", "ruled out", "rules out",
    "denies", "denied", "deny", "denying", "without", "never", "neither", "nor", "not", "no",
)
POST_NEGATIONS = (
    "was ruled out", "were ruled out", "is ruled out", "are ruled out", "has been ruled out",
    "have been ruled out",
)
SCOPE_ENDS = (
    "but", "however", "although", "though", "except", "apart from", "aside from", "whereas", "which", "secondary to",
)


def _phrase_pattern(phrases) -> str:
    return "|".join(r"\s+".join(map(re.escape, p.split())) for p in sorted(phrases, key=len, reverse=True))


_CUE = re.compile(
    rf"\b(?:(?P<pseudo>{_phrase_pattern(PSEUDO_NEGATIONS)})|(?P<post>{_phrase_pattern(POST_NEGATIONS)})"
    rf"|(?P<pre>{_phrase_pattern(PRE_NEGATIONS)}))\b",
    re.IGNORECASE,
)
# A period ends a clause unless it is a decimal point ("0.4 mg").
_CLAUSE_END = re.compile(rf"[.;:!?](?!\d)|\n|\b(?:{_phrase_pattern(SCOPE_ENDS)})\b", re.IGNORECASE)


def negation_cues(text: str) -> list[NegationCue]:
    """Every negation cue in `text` with the span it negates: forward to the clause end, or back to its start."""
    matches = [m for m in _CUE.finditer(text) if not m.group("pseudo")]
    if not matches:
        return []
    boundaries = [(m.start(), m.end()) for m in _CLAUSE_END.finditer(text)]
    ends, starts = [b[0] for b in boundaries] + [len(text)], [0] + [b[1] for b in boundaries]
    cues = []
    for match in matches:
        clause_end = ends[bisect_left(ends, match.end())]
        # A bare "ruled out" at the end of its clause looks back: "pneumonia ruled out."
        backward = match.group("post") or (
            match.group("pre").lower().startswith("rule") and not text[match.end() : clause_end].strip()
        )
        if backward:
            clause_start = starts[bisect_right(starts, match.start()) - 1]
            cues.append(NegationCue(match.group(), match.start(), match.end(), clause_start, match.start()))
        else:
            cues.append(NegationCue(match.group(), match.start(), match.end(), match.end(), clause_end))
    return cues


# --- tokens and lexicon ----------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")
_JOINER = re.compile(r"[\s\-'’/]*")  # what may separate the words of one multiword term
_IRREGULAR_SINGULARS = {
    "metastases": "metastasis", "stenoses": "stenosis", "diagnoses": "diagnosis", "prognoses": "prognosis",
    "anastomoses": "anastomosis", "analyses": "analysis", "emboli": "embolus", "thrombi": "thrombus",
    "calculi": "calculus", "bronchi": "bronchus", "leiomyomata": "leiomyoma", "carcinomata": "carcinoma",
    "vertebrae": "vertebra", "diverticula": "diverticulum", "feet": "foot", "teeth": "tooth",
}


@lru_cache(maxsize=1 << 16)
def singular(word: str) -> str:
    """A crude singular, applied alike to the lexicon and the text, so only consistency matters."""
    if word in _IRREGULAR_SINGULARS:
        return _IRREGULAR_SINGULARS[word]
    if len(word) <= 3 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes", "zes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def normalise(phrase: str) -> str:
    """Lower case, hyphens as spaces, single spaces: the form of `Mention.term`."""
    return " ".join(phrase.lower().replace("-", " ").split())


def _key(phrase: str) -> tuple[str, ...]:
    return tuple(singular(w) for w in _WORD.findall(phrase.lower()))


def _tokens(text: str) -> list[tuple[str, int, int]]:
    """(normalised word, start, end) for each word of `text`."""
    return [(singular(m.group().lower()), m.start(), m.end()) for m in _WORD.finditer(text)]


def _joined(text: str, tokens, i: int, n: int) -> bool:
    """Whether tokens i..i+n-1 are one phrase: only spaces, hyphens, apostrophes or slashes between them."""
    return all(_JOINER.fullmatch(text, tokens[j - 1][2], tokens[j][1]) for j in range(i + 1, i + n))


@lru_cache(maxsize=1 << 16)
def _morphology_kind(word: str) -> str | None:
    if len(word) < MIN_MORPHOLOGY_LENGTH or word in FALSE_FRIENDS or not word.isalpha():
        return None
    for kind, suffixes in _SUFFIX_TUPLES.items():
        if word.endswith(suffixes):
            return kind
    if word.startswith("cef"):
        return "drug"
    return None


_SUFFIX_TUPLES = {kind: tuple(suffixes) for kind, suffixes in SUFFIXES.items()}


# Words that qualify a phrase from the corpus generator but are not part of the term.
_QUALIFIERS = frozenset("""
    a an the acute chronic on severe moderate mild left right bilateral displaced obstructing symptomatic
    suspected prior progressive recurrent persistent sudden new possible probable generalized diffuse
    two three small large plus mm cm sided step up twice weekly urgent start resume add check consider
    repeat stop admit reverse continue intravenous serial daily strict aggressive supplemental discussion
    of and no not
    """.split())
_GENERIC_HEADS = frozenset("disease disorder syndrome failure injury use symptom pain".split())
_HEADS = {
    "diagnosis": frozenset("""
        disease disorder syndrome failure fracture tear stroke ulcer stone bleed angina exacerbation
        herniation seizure infection injury insufficiency deficiency hypertension pneumonia asthma cancer
        edema pain swelling tightness weakness numbness crackle murmur wheeze tenderness
        effusion droop drift distension bleeding nodule lesion polyp cyst hematoma rhinitis migraine
        dementia depression epilepsy obesity anemia hyperplasia fibrillation
        """.split()),
    "procedure": frozenset("""
        catheterization injection repair resection evacuation fusion therapy ultrasound induction
        transfusion imaging biopsy replacement fixation ablation drainage intubation dialysis fistula
        test thrombolysis
        """.split()),
}
_CLAUSE_SPLIT = re.compile(r"[,.;:()]|\b(?:and|or|with|without|since|from|due to|of the|at|to the|for|in|if|after)\b")
_DOSE_START = re.compile(r"\s\d|\b(?:inhaler|daily|nightly|twice|three times|as needed|tablet|capsule)\b")


def _corpus_terms(phrase: str, kind: str) -> list[str]:
    """Terms of one generator phrase: its parts, qualifiers stripped, ending in a word of `kind`."""
    terms = []
    for part in _CLAUSE_SPLIT.split(phrase.lower()):
        words = normalise(part).split()
        # Strip what qualifies the term ("acute", "left", "6 mm") or is another kind ("letrozole").
        while words and (
            words[0] in _QUALIFIERS
            or any(c.isdigit() for c in words[0])
            or _morphology_kind(singular(words[0])) not in (None, kind)
        ):
            words = words[1:]
        while words and words[-1].endswith(("ing", "ed")) and singular(words[-1]) not in _HEADS[kind]:
            words = words[:-1]  # "flank pain radiating", "adenomas removed"
        last = singular(words[-1]) if words else ""
        is_term = last in _HEADS[kind] or _morphology_kind(last) == kind
        if is_term and not (len(words) == 1 and last in _GENERIC_HEADS):
            terms.append(" ".join(words))
    return terms


def _drug_names(medication: str) -> list[str]:
    """'metoprolol tartrate 25 mg twice daily' -> ['metoprolol tartrate']; combinations split too."""
    name = _DOSE_START.split(medication.lower())[0]
    names = []
    for part in re.split(r"\bwith\b", name):
        part = normalise(part)
        if part:
            names.append(part)
            if "-" in medication and " " in part:  # "fluticasone-salmeterol": each component too
                names.extend(part.split())
    return names


@dataclass(frozen=True)
class _Lexicon:
    entries: dict  # key tuple -> (canonical term, kind)
    longest: dict  # first word -> the most words of a term starting with it
    surfaces: dict  # canonical term -> key tuples that mean it
    classes: dict  # canonical drug class -> (names, suffixes, prefixes)


def _groups(block: str) -> list[list[str]]:
    return [[normalise(s) for s in line.split("|")] for line in block.strip().splitlines()]


@cache
def _lexicon() -> _Lexicon:
    entries: dict[tuple, tuple[str, str]] = {}

    def add(surface: str, canonical: str, kind: str) -> None:
        key = _key(surface)
        if key and key not in entries:  # curated entries come first and win
            entries[key] = (canonical, kind)

    for block, kind in ((DIAGNOSES, "diagnosis"), (DRUGS, "drug"), (PROCEDURES, "procedure")):
        for group in _groups(block):
            for surface in group:
                add(surface, group[0], kind)
    classes = {}
    for names, members in DRUG_CLASSES.items():
        group = [normalise(s) for s in names.split("|")]
        for surface in group:
            add(surface, group[0], "drug")
        words = members.split()
        classes[group[0]] = (
            frozenset(w for w in words if "-" not in w),
            tuple(w[1:] for w in words if w.startswith("-")),
            tuple(w[:-1] for w in words if w.endswith("-")),
        )
    for conditions in CONDITIONS.values():
        for condition in conditions:
            for phrase in [*condition["pmh"], condition["assessment"], condition["complaint"], condition["exam"]]:
                for term in _corpus_terms(phrase, "diagnosis"):
                    add(term, term, "diagnosis")
            for term in _corpus_terms(condition["plan"], "procedure"):
                add(term, term, "procedure")
            for medication in condition["meds"]:
                for name in _drug_names(medication):
                    add(name, name, "drug")
    longest: dict[str, int] = {}
    surfaces: dict[str, list] = {}
    for key, (canonical, _) in entries.items():
        longest[key[0]] = max(longest.get(key[0], 0), len(key))
        surfaces.setdefault(canonical, []).append(key)
    return _Lexicon(entries, longest, surfaces, classes)


def vocabulary() -> dict[str, str]:
    """Canonical lexicon term -> kind (morphology finds more)."""
    return {canonical: kind for canonical, kind in _lexicon().entries.values()}


# --- mentions ----------------------------------------------------------------------------------------


def _match_at(text: str, tokens, i: int, lexicon: _Lexicon) -> tuple[int, str, str] | None:
    """(words, term, kind) of the longest term starting at token i, or None."""
    word = tokens[i][0]
    for n in range(min(lexicon.longest.get(word, 0), len(tokens) - i), 0, -1):
        entry = lexicon.entries.get(tuple(t[0] for t in tokens[i : i + n]))
        if entry and (n == 1 or _joined(text, tokens, i, n)):
            return n, entry[0], entry[1]
    kind = _morphology_kind(word)
    return (1, word, kind) if kind else None


def _negated(start: int, end: int, cues: list[NegationCue]) -> bool:
    return any(c.scope_start <= start and end <= c.scope_end for c in cues)


def _mentions(text: str, tokens, cues) -> list[Mention]:
    lexicon, mentions, i = _lexicon(), [], 0
    while i < len(tokens):
        found = _match_at(text, tokens, i, lexicon)
        if found is None:
            i += 1
            continue
        n, term, kind = found
        start, end = tokens[i][1], tokens[i + n - 1][2]
        mentions.append(Mention(term, kind, start, end, _negated(start, end, cues)))
        i += n
    return mentions


def clinical_mentions(text: str) -> list[Mention]:
    """Diagnoses (findings included), drugs and procedures in `text`, in order, longest match first."""
    return _mentions(text, _tokens(text), negation_cues(text))


# --- critical errors ---------------------------------------------------------------------------------


_ADJECTIVES = (("osis", "otic"), ("emia", "emic"), ("itis", "itic"), ("oma", "omatous"), ("y", "ic"))


class _Source:
    """A source note indexed for 'where does this term occur, and is it negated there?'."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.cues = negation_cues(text)
        self.positions: dict[str, list[int]] = {}
        for index, token in enumerate(self.tokens):
            self.positions.setdefault(token[0], []).append(index)
        self.drugs = [m for m in _mentions(text, self.tokens, self.cues) if m.kind == "drug"]

    def find(self, key: tuple[str, ...]) -> list[tuple[int, int]]:
        spans = []
        for i in self.positions.get(key[0], ()):
            window = self.tokens[i : i + len(key)]
            if tuple(t[0] for t in window) == key and _joined(self.text, self.tokens, i, len(key)):
                spans.append((window[0][1], window[-1][2]))
        return spans

    def occurrences(self, mention: Mention) -> list[tuple[int, int]]:
        lexicon = _lexicon()
        keys = lexicon.surfaces.get(mention.term, [_key(mention.term)])
        spans = [span for key in keys for span in self.find(key)]
        if " " not in mention.term:  # the adjective supports the noun: "arthroscopic" -> "arthroscopy"
            for noun, adjective in _ADJECTIVES:
                if mention.term.endswith(noun):
                    spans += self.find((mention.term[: -len(noun)] + adjective,))
        if mention.kind == "drug":
            # The drug's own name is enough: "metoprolol" supports "metoprolol tartrate".
            name = _key(mention.term)[0]
            if len(name) >= 4 and name not in ("vitamin", "prenatal"):
                spans += self.find((name,))
            if mention.term in lexicon.classes:
                names, suffixes, prefixes = lexicon.classes[mention.term]
                spans += [
                    (d.start, d.end) for d in self.drugs
                    if any(w in names or w.endswith(suffixes) or (prefixes and w.startswith(prefixes))
                           for w in d.term.split())
                ]
        return spans


def critical_errors(source: str, summary: str) -> list[CriticalError]:
    """Summary mentions the source does not support, and mentions whose negation the summary flipped.

    A mention is unsupported when no form of it (synonym, abbreviation, plural, hyphenation; for a
    drug its name alone or, for a class, any member drug) occurs in the source. It is a negation flip
    when it occurs but every occurrence has the opposite negation. Each (kind, term) is reported once.
    """
    index, errors = _Source(source), []
    for mention in clinical_mentions(summary):
        spans = index.occurrences(mention)
        if not spans:
            error = CriticalError(f"unsupported_{mention.kind}", mention.term)
        elif all(_negated(start, end, index.cues) != mention.negated for start, end in spans):
            error = CriticalError("negation_flip", mention.term)
        else:
            continue
        if error not in errors:
            errors.append(error)
    return errors


def unsupported_entities(source: str, output: str) -> list[str]:
    """Terms in `output` with no support in `source` (hallucinated diagnoses, drugs, procedures), once each."""
    terms = []
    for error in critical_errors(source, output):
        if error.kind.startswith("unsupported_") and error.term not in terms:
            terms.append(error.term)
    return terms
